"""The code suite (seed 003's protocol): the model writes ``solve(x)`` from a solved
example of the item's kind, and the sandbox runs it; the held-out items are the
algorithmic suite's. RL rows test the program on other instances of the same type and
difficulty than the one the prompt shows, so copying the example passes nothing.
"""

from __future__ import annotations

import json
import os
import zlib

from afm_trainer.suites import algorithmic
from afm_trainer.suites.base import (
    RLDataRequest,
    RowError,
    Suite,
    kept,
    read_jsonl,
    register,
    rl_row,
    sample,
    scored_row,
)
from afm_trainer.suites.responses import code_of
from afm_trainer.tools.sandbox import run_python
from afm_trainer.world.algorithmic import (
    TYPES,
    Task,
    code_example,
    code_prompt,
    generate_suite,
    make_task,
    solution_source,
    verify,
)

N_TESTS = 4
CODE_TIMEOUT_S = 5.0  # wall time for all of a response's tests together; an endless loop scores 0

# Runs after the model's code in the same file. Each test is caught on its own, so code
# that fails one input still scores on the others. The results go to the sandbox's result
# channel, not stdout, so nothing the code prints passes for them; whatever arrives there
# is validated (the code could write there too, but only answers it could have returned).
HARNESS = """
import json as _json, os as _os
_results = []
for _x in _json.loads({tests!r}):
    try:
        _results.append(str(solve(_x)))
    except BaseException:
        _results.append(None)
_os.write(int(_os.environ["AFM_RESULT_FD"]), _json.dumps(_results).encode())
"""


def run_tests(code: str, xs: list) -> list[str | None] | None:
    """str(solve(x)) for each x (None where it raised), or None if the program failed as a
    whole (syntax error, no solve, time or memory limit, results not a list of that many
    strings or nulls). Runs only in the sandbox."""
    program = code + "\n" + HARNESS.format(tests=json.dumps(xs))
    # Lone surrogates cannot be encoded, and run_python would fail to start the child.
    program = program.encode("utf-8", "replace").decode("utf-8")
    result = run_python(program, timeout_s=CODE_TIMEOUT_S, with_result=True)
    if result.status != "ok":
        return None
    try:
        outputs = json.loads(result.result)
    except ValueError:
        return None
    if not isinstance(outputs, list) or len(outputs) != len(xs):
        return None
    if not all(out is None or isinstance(out, str) for out in outputs):
        return None
    return outputs


def _row(task: Task) -> dict:
    seed = zlib.crc32(task.task_id.encode())
    tests = [make_task(seed, task.type, task.difficulty, i) for i in range(N_TESTS)]
    tests_json = json.dumps([{"x": t.x, "expected": t.answer} for t in tests])
    return rl_row(
        SUITE,
        code_prompt(task),
        solution_source(task.type),
        id=task.task_id,
        type=task.type,
        difficulty=task.difficulty,
        tests=tests_json,
    )


def rl_rows(request: RLDataRequest) -> tuple[list[dict], list[dict]]:
    n_val, n_train = (algorithmic.per_cell(n, request.difficulties) for n in (request.n_val, request.n_train))
    val = generate_suite(algorithmic.VAL_SEED, n_val, difficulties=request.difficulties)
    # A training prompt shows its example's answer: never one of a held-out algorithmic task.
    exclude = {t.prompt for t in val + algorithmic.heldout_tasks(request)}
    train = generate_suite(algorithmic.TRAIN_SEED, n_train, difficulties=request.difficulties, exclude=exclude)
    return (
        [_row(t) for t in sample(train, request.n_train, algorithmic.TRAIN_SEED)],
        [_row(t) for t in sample(val, request.n_val, algorithmic.VAL_SEED)],
    )


def credit(code: str, ground_truth: str, extra_info: dict) -> float:
    """Fraction of the tests passed: partial credit gives RL a gradient before the code is
    fully right; ``correct`` still means all of them."""
    try:
        tests = algorithmic.json_field(extra_info, "tests")
        extra_info["type"]
    except (KeyError, TypeError, ValueError) as exc:
        raise RowError(f"afm/code row {extra_info.get('index')}: no readable {exc}") from None
    if not tests:
        raise RowError(f"afm/code row {extra_info.get('index')} has no tests")
    outputs = run_tests(code, [t["x"] for t in tests]) or [None] * len(tests)
    # verify, not string equality: two_sum accepts any right pair
    passed = sum(
        verify(Task("", extra_info["type"], 0, "", t["expected"], t["x"]), out) for t, out in zip(tests, outputs)
    )
    return passed / len(tests)


def score_completion(task: Task, completion: str) -> dict:
    """A held-out item: the program's output on the item's input, run in the sandbox,
    judged by the type's verifier (predicted None: no program, or it failed)."""
    code = code_of(completion)
    outputs = run_tests(code, [task.x]) if code else None
    predicted = outputs[0] if outputs else None
    correct = verify(task, predicted)
    return scored_row(task.task_id, {"type": task.type}, task.difficulty, task.answer, predicted, correct, completion)


def prompt_of(item: dict) -> str:
    """A held-out item's prompt: another solved instance of its kind (the item is the test)."""
    return code_prompt(code_example(algorithmic.task_of_item(item)))


def score(item: dict, completion: str) -> dict:
    return score_completion(algorithmic.task_of_item(item), completion)


def evaluate(run, items: list[dict]) -> list[dict]:
    from afm_trainer.eval.lm import generate

    prompts = [[{"role": "user", "content": prompt_of(it)}] for it in items]
    completions = generate(
        run.model, run.tokenizer, prompts, run.max_new_tokens, temperature=run.temperature, seed=run.seed
    )
    return [score(it, completion) for it, completion in zip(items, completions)]


def chain_code_example(chain: dict) -> tuple[str | None, str | None]:
    """(the code prompt of an agent chain's task, its Coder's program); None for what the
    chain lacks (no task input, no Coder turn)."""
    coder = next((s.get("output") for s in chain.get("trajectory") or [] if s.get("agent") == "Coder"), None)
    prompt = None
    if "x" in chain and chain.get("type") in TYPES:
        task = Task(str(chain.get("id")), chain["type"], int(chain.get("difficulty") or 0), "", "", chain["x"])
        prompt = code_prompt(task)
    return prompt, coder if isinstance(coder, str) else None


def training_examples(world: str, min_score: float | None = None) -> list[tuple[str, str]]:
    """The code-writing examples of the world's agent chains: the code prompt of a chain's
    task and its Coder's program, as the demo's code set builds them (it trains on a sample
    per type), for the nearest-training-example baseline; a chain scored below
    ``min_score`` (the Reviewer rejected its program) is left out."""
    examples = []
    for chain in read_jsonl(os.path.join(world, "traces", "agent_chain.jsonl")):
        prompt, program = chain_code_example(chain)
        if prompt is not None and program is not None and kept(chain, min_score):
            examples.append((prompt, program))
    return examples


SUITE = register(
    Suite(
        name="code",
        description=(
            "The same items; the model writes solve(x) from a solved example of the kind, "
            "the sandbox runs it on the item's input (seed 003)."
        ),
        data_source="afm/code",
        agent="single_turn_agent",
        heldout_file="algorithmic.jsonl",
        group_key="type",
        max_new_tokens=160,  # the longest reference program (binary search) is 121 tokens
        easy_tiers=("1", "2", "3"),
        rl_rows=rl_rows,
        extract=code_of,
        credit=credit,
        evaluate=evaluate,
        training_answers=algorithmic.answers_by_type,
        prompt_of=prompt_of,
        score=score,
        training_examples=training_examples,
    )
)
