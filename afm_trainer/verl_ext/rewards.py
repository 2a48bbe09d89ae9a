"""Rule rewards for verl's RL trainer, one scorer per ``data_source``.

    reward.custom_reward_function.path=afm_trainer/verl_ext/rewards.py \
    reward.custom_reward_function.name=compute_score

(or ``path=pkg://afm_trainer.verl_ext.rewards``, as afm_trainer/config/grpo.yaml does;
verl moves the legacy top-level ``custom_reward_function.*`` keys there too). Loaded by
its path, the file is a module outside any package, so it imports only absolute
``afm_trainer`` modules, and nothing heavy (no torch).

The rows come from ``data_preprocess/make_rl_data.py``:
- ``afm/qa``: ground_truth is the answer; a tool agent's response may hold
  ``<search>query</search>`` and ``<code>python</code>`` calls (and the tools' replies,
  afm_trainer/verl_ext/tools.py) before its answer.
- ``afm/algorithmic``: ground_truth is the reference answer; extra_info carries the
  task's ``type``, ``difficulty`` and ``x`` (as a JSON string) to rebuild the Task.
- ``afm/code``: the answer is Python defining ``solve(x)``; extra_info["tests"] is a JSON
  list of {"x", "expected"}, run in the sandbox.

Every scorer returns the same keys, {"score", "correct", "format"}, since verl gathers
the extra keys of a batch into per-key metric columns.

    format  = 1 if the response is well-formed (below), else 0
    credit  = qa: 1 on an exact (normalised) match, else QA_PARTIAL_WEIGHT * token F1
              algorithmic: 1 if the demo world's verifier accepts the answer, else 0
              code: fraction of the tests passed
    score   = format * (FORMAT_WEIGHT + CORRECT_WEIGHT * credit)        (0 .. 1.1)
    correct = 1 if credit == 1 (qa exact match, verifier accepts, every test passes)

Correctness counts only in a well-formed response, so malformed output scores 0: an
answer the held-out evaluation cannot extract must not be reinforced.
Well-formed: the tags, in order, are tool calls (<search>...</search> or
<code>...</code>, each non-empty), then one non-empty <answer>...</answer>; for
``afm/code`` a response with no tags at all and exactly one ```python block is
well-formed too.
Nothing in a model's output makes a scorer raise; a broken row (missing extra_info) or
an unknown data_source does, loudly, since it is a bug in the data, not in the model.
"""

from __future__ import annotations

import json
import re
import secrets
from collections import Counter

from afm_trainer.tasks.algorithmic import Task, normalise, verify
from afm_trainer.traces.formats import TOOL_CALL
from afm_trainer.tools.sandbox import run_python

CORRECT_WEIGHT = 1.0  # the signal RL is for
FORMAT_WEIGHT = 0.1  # small: enough to learn the tags early, never worth more than being right
QA_PARTIAL_WEIGHT = 0.5  # a near-miss ("Kalo Works" for "Kalomi Works") earns at most half an exact match
CODE_TIMEOUT_S = 5.0  # wall time for all of a response's tests together; an endless loop scores 0

TAG = re.compile(r"</?(?:answer|search|code)>")
TAG_LETTER = {"<search>": "s", "</search>": "S", "<code>": "c", "</code>": "C", "<answer>": "a", "</answer>": "A"}
WELL_FORMED = re.compile(r"(?:sS|cC)*aA")  # tool calls first, then exactly one answer
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
PYTHON_FENCE = re.compile(r"```[ \t]*(?:python|py)[ \t]*\n(.*?)```", re.DOTALL)


def answer_of(text: str) -> str | None:
    """The answer of a well-formed response (see the module doc), else None."""
    tags = "".join(TAG_LETTER[t] for t in TAG.findall(text))
    if not WELL_FORMED.fullmatch(tags):
        return None
    if any(not body.strip() for _, body in TOOL_CALL.findall(text)):
        return None
    return ANSWER.search(text).group(1).strip() or None


def code_of(text: str) -> str | None:
    """The code of a well-formed afm/code response: the answer (unfenced if it holds a
    fenced block) or, in a response without tags, its one ```python block."""
    if not TAG.search(text):
        blocks = PYTHON_FENCE.findall(text)
        return blocks[0] if len(blocks) == 1 and blocks[0].strip() else None
    answer = answer_of(text)
    if answer is None:
        return None
    fenced = FENCE.search(answer)
    return fenced.group(1) if fenced else answer


def token_f1(predicted: str, gold: str) -> float:
    """SQuAD-style F1 over the words of the normalised texts (punctuation dropped)."""
    words = lambda text: re.findall(r"\w+", normalise(text))  # noqa: E731
    pred, ref = words(predicted), words(gold)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score_qa(answer: str, ground_truth: str, extra_info: dict) -> float:
    if normalise(answer) == normalise(ground_truth):  # the held-out evaluation's own criterion
        return 1.0
    return QA_PARTIAL_WEIGHT * token_f1(answer, ground_truth)


def _json_field(extra_info: dict, key: str):
    """A field make_rl_data stored as JSON text (parquet holds mixed-type values badly)."""
    value = extra_info[key]
    return json.loads(value) if isinstance(value, str) else value


def task_of(extra_info: dict, answer: str) -> Task:
    """The Task a row describes. JSON turns tuples into lists (two_sum's x is
    (values, target)); the verifier and solutions only unpack it, so a list does."""
    x = _json_field(extra_info, "x")
    return Task(str(extra_info.get("id") or ""), extra_info["type"], int(extra_info.get("difficulty") or 0), "", answer, x)


def score_algorithmic(answer: str, ground_truth: str, extra_info: dict) -> float:
    return 1.0 if verify(task_of(extra_info, ground_truth), answer) else 0.0


# Runs after the model's code in the same file. Each test is caught on its own, so code
# that fails one input still scores on the others; results go out on one line behind a
# marker the model cannot know, so whatever the model's code prints is not mistaken for them.
HARNESS = """
import json as _json
_results = []
for _x in _json.loads({tests!r}):
    try:
        _results.append(str(solve(_x)))
    except BaseException:
        _results.append(None)
print({marker!r} + _json.dumps(_results))
"""


def run_tests(code: str, xs: list) -> list[str | None] | None:
    """str(solve(x)) for each x (None where it raised), or None if the program failed as a
    whole (syntax error, no solve, time or memory limit)."""
    marker = f"@@results-{secrets.token_hex(8)}@@"
    program = code + "\n" + HARNESS.format(tests=json.dumps(xs), marker=marker)
    # Lone surrogates cannot be encoded, and run_python would fail to start the child.
    program = program.encode("utf-8", "replace").decode("utf-8")
    result = run_python(program, timeout_s=CODE_TIMEOUT_S)
    lines = [line for line in result.stdout.splitlines() if line.startswith(marker)]
    if result.status != "ok" or not lines:
        return None
    outputs = json.loads(lines[-1][len(marker) :])
    return outputs if len(outputs) == len(xs) else None


def score_code(code: str, ground_truth: str, extra_info: dict) -> float:
    """Fraction of the tests passed: partial credit gives RL a gradient before the code is
    fully right; ``correct`` still means all of them."""
    tests = _json_field(extra_info, "tests")
    if not tests:
        raise ValueError(f"afm/code row {extra_info.get('index')} has no tests")
    outputs = run_tests(code, [t["x"] for t in tests]) or [None] * len(tests)
    passed = sum(
        verify(Task("", extra_info["type"], 0, "", t["expected"], t["x"]), out)  # two_sum accepts any right pair
        for t, out in zip(tests, outputs)
    )
    return passed / len(tests)


# data_source -> (what to score in a response, scorer(answer, ground_truth, extra_info) -> credit 0..1)
SOURCES = {
    "afm/qa": (answer_of, score_qa),
    "afm/algorithmic": (answer_of, score_algorithmic),
    "afm/code": (code_of, score_code),
}


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """verl's custom reward function (its signature); returns {"score", "correct", "format"}."""
    if data_source not in SOURCES:
        raise ValueError(f"unknown data_source {data_source!r}; rewards.py scores {sorted(SOURCES)}")
    extract, scorer = SOURCES[data_source]
    if isinstance(solution_str, bytes):
        solution_str = solution_str.decode("utf-8", "replace")
    answer = extract(solution_str) if isinstance(solution_str, str) else None
    if answer is None:
        return {"score": 0.0, "correct": 0, "format": 0}
    credit = scorer(answer, str(ground_truth), extra_info or {})
    return {"score": FORMAT_WEIGHT + CORRECT_WEIGHT * credit, "correct": int(credit == 1.0), "format": 1}
