"""The RL rewards (afm_trainer/verl_ext/rewards.py) on right, wrong and malformed output."""

import dataclasses
import importlib.util
import json
import os

import pytest

from afm_trainer.suites import code as code_suite
from afm_trainer.suites import qa as qa_suite
from afm_trainer.world.algorithmic import TYPES, make_task, solution_source
from tests.conftest import REPO

REWARDS_PATH = os.path.join(REPO, "afm_trainer", "verl_ext", "rewards.py")


def _load_as_verl_does():
    """verl's load_extern_object: the file by its path, under a name outside any package
    (so a relative import or a dataclass needing sys.modules would fail here too)."""
    spec = importlib.util.spec_from_file_location("custom_module_rewards_test", REWARDS_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rewards = _load_as_verl_does()
FULL = rewards.FORMAT_WEIGHT + rewards.CORRECT_WEIGHT
FORMAT_ONLY = rewards.FORMAT_WEIGHT
ZERO = {"score": 0.0, "correct": 0, "format": 0}


def scored(data_source, response, ground_truth, extra_info=None):
    # Keyword arguments, as verl's naive reward manager calls it, plus an extra kwarg it may pass.
    return rewards.compute_score(
        data_source=data_source,
        solution_str=response,
        ground_truth=ground_truth,
        extra_info=extra_info,
        reward_router_address=None,
    )


def score(data_source, response, ground_truth, extra_info=None):
    """The reward without its ``reason`` text (a string on every row, empty when scored)."""
    result = scored(data_source, response, ground_truth, extra_info)
    assert isinstance(result.pop("reason"), str)
    return result


def algorithmic_info(task):
    """extra_info as make_rl_data writes it: x as JSON text (two_sum's tuple becomes a list)."""
    return {"type": task.type, "difficulty": task.difficulty, "x": json.dumps(task.x), "id": task.task_id}


# --- the format rule, shared by every source ---

MALFORMED = {
    "empty string": "",
    "no tags": "The answer is Kafen.",
    "two answers": "<answer>Kafen</answer> or maybe <answer>Velmora</answer>",
    "unclosed answer": "<answer>Kafen",
    "close before open": "</answer>Kafen<answer>",
    "empty answer": "<answer>  </answer>",
    "nested answer": "<answer><answer>Kafen</answer></answer>",
    "unclosed search": "<search>Rakaur<answer>Kafen</answer>",
    "empty search": "<search> </search><answer>Kafen</answer>",
    "search after answer": "<answer>Kafen</answer><search>Rakaur</search>",
    "answer inside search": "<search>Rakaur <answer>Kafen</answer></search>",
    "unclosed code call": "<code>print(1)<answer>Kafen</answer>",
    "empty code call": "<code></code><answer>Kafen</answer>",
    "garbage bytes": "\x00\xff\ufffd<answ\x07er>Kafen</ans\udcffwer>\ud800",
    # Blocks must close before the next opens: interleaved or nested tags are malformed.
    "think and answer interleaved": "<think>Rakaur<answer></think>Kafen</answer>",
    "answer closed after think": "<think>Rakaur<answer>Kafen</think></answer>",
    "answer inside think": "<think>Rakaur <answer>Kafen</answer></think>",
    "think inside answer": "<answer><think>Rakaur</think>Kafen</answer>",
    "search and think interleaved": "<search>Rakaur<think>born in</search></think><answer>Kafen</answer>",
    "code and think interleaved": "<think>run it<code>print(1)</think></code><answer>Kafen</answer>",
    "summary and answer interleaved": "<summary>Rakaur<answer>Kafen</summary></answer>",
    "unclosed think": "<think>Rakaur<answer>Kafen</answer>",
    "stray think close": "</think><answer>Kafen</answer>",
    "think after answer": "<answer>Kafen</answer><think>done</think>",
}


@pytest.mark.parametrize("source", ["afm/qa", "afm/algorithmic", "afm/code"])
@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_output_scores_zero_and_never_raises(source, name):
    task = make_task(1, "fibonacci", 2, 0)
    info = {**algorithmic_info(task), "tests": json.dumps([{"x": task.x, "expected": task.answer}])}
    assert score(source, MALFORMED[name], "Kafen", info) == ZERO


@pytest.mark.parametrize("response", [None, b"<answer>\xff\xfe</answer>", 42])
def test_non_text_responses_score_zero_or_are_decoded(response):
    result = score("afm/qa", response, "Kafen")
    assert result["correct"] == 0 and result["score"] <= FORMAT_ONLY


def test_the_keys_are_the_same_for_every_outcome():
    # verl gathers extra keys per batch: a key missing from one row breaks the column.
    outcomes = [scored("afm/qa", r, "Kafen") for r in ("", "<answer>Kafen</answer>", "<answer>x</answer>")]
    assert all(set(o) == {"score", "correct", "format", "reason"} for o in outcomes)
    assert [o["reason"] for o in outcomes] == ["no well-formed answer", "", ""]


def test_unknown_data_source_is_an_error_naming_it():
    with pytest.raises(ValueError, match="openai/gsm8k"):
        score("openai/gsm8k", "<answer>1</answer>", "1")
    with pytest.raises(ValueError, match="'countdown'"):  # a Search-R1-shaped row of no known source
        score("countdown", "<answer>1</answer>", {"target": ["1"]})


# --- afm/qa ---


@pytest.mark.parametrize(
    "response",
    [
        "<answer>Kafen</answer>",
        "<think>Rakaur was born in Kafen.</think>\n<answer> kafen. </answer>",
        "<search>Rakaur</search>\n<information>[1] Rakaur: Rakaur was born in Kafen.</information>\n"
        "<search>Kafen</search><information>[1] Kafen: ...</information><answer>Kafen</answer>",
        "<code>print(2 + 2)</code><information>status: ok\n4</information><answer>Kafen</answer>",
        "<summary>Who is Rakaur?</summary><think>Search him.</think><search>Rakaur</search>"
        "<information>[1] Rakaur: born in Kafen.</information><think>Kafen.</think>\n<answer>Kafen</answer>",
    ],
)
def test_qa_exact_match_after_normalising_is_full_score(response):
    assert score("afm/qa", response, "Kafen") == {"score": FULL, "correct": 1, "format": 1}


def test_qa_partial_answer_earns_a_share_of_the_f1():
    result = score("afm/qa", "<answer>Kalomi</answer>", "Kalomi Works")
    f1 = 2 * (1 * 0.5) / (1 + 0.5)  # precision 1, recall 1/2
    assert result["correct"] == 0 and result["format"] == 1
    assert result["score"] == pytest.approx(FORMAT_ONLY + qa_suite.PARTIAL_WEIGHT * f1)


def test_qa_wrong_answer_gets_only_the_format_score():
    assert score("afm/qa", "<answer>Velmora</answer>", "Kafen") == {"score": FORMAT_ONLY, "correct": 0, "format": 1}


def test_qa_every_alias_earns_full_credit():
    aliases = '["Jane Austen", "Austen", "Miss Austen"]'  # a row's ground truth with aliases
    for response in ("<answer>Jane Austen</answer>", "<answer>austen.</answer>", "<answer>Miss Austen</answer>"):
        assert score("afm/qa", response, aliases) == {"score": FULL, "correct": 1, "format": 1}, response
    assert score("afm/qa", "<answer>Charlotte Bronte</answer>", aliases) == {
        "score": FORMAT_ONLY,
        "correct": 0,
        "format": 1,
    }


def test_qa_partial_credit_is_the_best_over_the_aliases():
    aliases = '["Kalomi Iron Works Company", "Kalomi Works"]'
    # "Kalomi": precision 1 against both; recall 1/4 against the first, 1/2 against the second
    best_f1 = 2 * (1 * 0.5) / (1 + 0.5)
    result = score("afm/qa", "<answer>Kalomi</answer>", aliases)
    assert result["correct"] == 0
    assert result["score"] == pytest.approx(FORMAT_ONLY + qa_suite.PARTIAL_WEIGHT * best_f1)


def test_qa_ground_truth_is_plain_text_for_one_answer_and_a_json_list_for_several():
    assert qa_suite.ground_truth_of(["Kafen"]) == "Kafen"  # the rows written before aliases, unchanged
    assert qa_suite.ground_truth_of(["Paris", "City of Light"]) == '["Paris", "City of Light"]'
    assert qa_suite.ground_truth_of(['["a"]']) == '["[\\"a\\"]"]'  # one answer that reads as a list
    assert qa_suite.golden_answers('["[\\"a\\"]"]') == ['["a"]']
    assert qa_suite.golden_answers("[not json") == ["[not json"]
    # a lone answer in brackets is text, as it always was
    assert score("afm/qa", "<answer>[not json</answer>", "[not json")["correct"] == 1


# Search-R1's RL rows, as scripts/data_process/nq_search.py writes them (the prompt cut short).
SEARCH_R1_ROWS = [
    {
        "data_source": "nq",
        "prompt": [{"role": "user", "content": "Answer the given question. ... Question: who wrote hamlet?\n"}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": ["William Shakespeare", "Shakespeare"]}},
        "extra_info": {"split": "train", "index": 0},
    },
    {
        "data_source": "hotpotqa",
        "prompt": [
            {"role": "user", "content": "Answer the given question. ... Question: what is the capital of france?\n"}
        ],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": ["Paris"]}},
        "extra_info": {"split": "train", "index": 1},
    },
]


def test_search_r1_rows_read_back_from_their_parquet_are_scored_as_qa(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(SEARCH_R1_ROWS), tmp_path / "train.parquet")
    nq, hotpot = pq.read_table(tmp_path / "train.parquet").to_pylist()

    def row_score(row, response):
        return score(row["data_source"], response, row["reward_model"]["ground_truth"], row["extra_info"])

    searched = "<think>I need the author.</think><search>hamlet author</search><information>...</information>"
    assert row_score(nq, searched + "<answer> Shakespeare </answer>") == {"score": FULL, "correct": 1, "format": 1}
    assert row_score(nq, "<answer>William Shakespeare</answer>")["correct"] == 1
    assert row_score(hotpot, "<answer>Lyon</answer>") == {"score": FORMAT_ONLY, "correct": 0, "format": 1}
    assert row_score(hotpot, "Paris") == ZERO  # no answer tags: malformed, as for our own rows


def test_search_r1_targets_as_pandas_gives_them_are_read_too():
    np = pytest.importorskip("numpy")
    truth = {"target": np.array(["Leonardo da Vinci", "Leonardo"], dtype=object)}
    assert score("popqa", "<answer>leonardo</answer>", truth)["correct"] == 1


def test_a_search_r1_source_with_a_broken_ground_truth_is_an_error_naming_target():
    with pytest.raises(ValueError, match="'target'"):
        score("nq", "<answer>Paris</answer>", {"answers": ["Paris"]})


@pytest.mark.parametrize("source", ["nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle"])
def test_every_search_r1_qa_source_is_scored(source):
    assert score(source, "<answer>Paris</answer>", {"target": ["Paris"]})["correct"] == 1


# --- afm/algorithmic ---


def test_algorithmic_right_and_wrong_answers():
    task = make_task(3, "rpn", 4, 0)
    info = algorithmic_info(task)
    assert score("afm/algorithmic", f"<answer>{task.answer}</answer>", task.answer, info)["correct"] == 1
    wrong = str(int(task.answer) + 1)
    assert score("afm/algorithmic", f"<answer>{wrong}</answer>", task.answer, info) == {
        "score": FORMAT_ONLY,
        "correct": 0,
        "format": 1,
    }


def test_two_sum_accepts_any_right_pair_after_x_went_through_json():
    values, target = [3, 1, 3, 2], 4  # pairs (0, 1), (1, 2)... any of them is right
    task = make_task(1, "two_sum", 1, 0)
    task.x, task.answer = (values, target), "0 1"
    info = algorithmic_info(task)
    assert json.loads(info["x"]) == [values, target]  # a list now, not a tuple
    assert score("afm/algorithmic", "<answer>1 2</answer>", "0 1", info)["correct"] == 1
    assert score("afm/algorithmic", "<answer>0 2</answer>", "0 1", info)["correct"] == 0  # 3 + 3 != 4
    assert score("afm/algorithmic", "<answer>1 ²</answer>", "0 1", info)["correct"] == 0  # a digit int() refuses


# --- afm/code ---

FIB_TESTS = [{"x": 0, "expected": "0"}, {"x": 1, "expected": "1"}, {"x": 5, "expected": "5"}, {"x": 6, "expected": "8"}]
FIB_INFO = {"type": "fibonacci", "difficulty": 2, "tests": json.dumps(FIB_TESTS)}
FIB = "def solve(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"


@pytest.mark.parametrize(
    "response",
    [
        f"<answer>\n{FIB}</answer>",
        f"Here it is.\n<answer>\n```python\n{FIB}```\n</answer>",
        f"Here it is.\n```python\n{FIB}```\nDone.",  # no tags: one python block is the answer
        f"<think>Iterate.</think>\n```python\n{FIB}```",  # reasoning, then the one block
        f"<think>Iterate.</think><answer>\n{FIB}</answer>",
    ],
)
def test_right_code_passes_every_test(response):
    assert score("afm/code", response, "", FIB_INFO) == {"score": FULL, "correct": 1, "format": 1}


def test_two_python_blocks_without_tags_are_malformed():
    assert score("afm/code", f"```python\n{FIB}```\n```python\n{FIB}```", "", FIB_INFO) == ZERO


@pytest.mark.parametrize(
    "response",
    [
        f"<think>Iterate.\n```python\n{FIB}```",  # unclosed reasoning around the block
        f"<think>Iterate.</think></think>\n```python\n{FIB}```",
        f"<think><summary>Iterate.</think></summary>\n```python\n{FIB}```",
    ],
)
def test_an_untagged_code_block_after_broken_reasoning_tags_is_malformed(response):
    assert score("afm/code", response, "", FIB_INFO) == ZERO


@pytest.mark.parametrize(
    "code, passed",
    [
        ("def solve(n):\n    return n\n", 3),  # right for 0, 1, 5; wrong for 6
        ("def solve(n):\n    if n == 6:\n        raise ValueError(n)\n    return n\n", 3),  # raises on one input
        ("def solve(n):\n    return 'eight'\n", 0),
        ("def solve(n):\n    raise RuntimeError('no')\n", 0),
        ("raise SystemExit(0)\n", 0),  # exits before the tests run
        ("def solve(n) return n\n", 0),  # syntax error
        ("def sol(n):\n    return n\n", 0),  # no solve
        ("def solve(n):\n    return -1\x00\n", 0),  # a null byte (refused or ignored, by Python version)
    ],
)
def test_wrong_or_failing_code_scores_the_fraction_of_tests_passed(code, passed):
    result = score("afm/code", f"<answer>{code}</answer>", "", FIB_INFO)
    assert result == {"score": pytest.approx(FORMAT_ONLY + passed / len(FIB_TESTS)), "correct": 0, "format": 1}


def test_code_cannot_print_its_own_results():
    # The results line has a per-run marker; printing a look-alike and exiting earns nothing.
    code = 'import os\nprint(\'@@results@@["0", "1", "5", "8"]\', flush=True)\nos._exit(0)\n'
    assert score("afm/code", f"<answer>{code}</answer>", "", FIB_INFO)["score"] == FORMAT_ONLY


def test_an_endless_loop_is_cut_by_the_sandbox_time_limit(monkeypatch):
    statuses = []
    real_run = code_suite.run_python

    def spy(program, timeout_s, **kwargs):
        result = real_run(program, timeout_s=timeout_s, **kwargs)
        statuses.append(result.status)
        return result

    monkeypatch.setattr(code_suite, "run_python", spy)
    monkeypatch.setattr(code_suite, "CODE_TIMEOUT_S", 1.0)  # the rule is the same at 5 s; the test is shorter
    result = score("afm/code", "<answer>def solve(n):\n    while True:\n        pass\n</answer>", "", FIB_INFO)
    assert statuses == ["timeout"]
    assert result == {"score": FORMAT_ONLY, "correct": 0, "format": 1}


def test_every_reference_solution_passes_its_own_type():
    # The reward and the task world agree: the Coder's reference code earns full marks.
    for task_type in TYPES:
        cases = [make_task(7, task_type, 3, i) for i in range(3)]
        info = {
            "type": task_type,
            "difficulty": 3,
            "tests": json.dumps([{"x": t.x, "expected": t.answer} for t in cases]),
        }
        result = score("afm/code", f"<answer>{solution_source(task_type)}</answer>", "", info)
        assert result["correct"] == 1, task_type


def test_a_code_row_without_tests_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="no tests"):
        score("afm/code", f"<answer>{FIB}</answer>", "", {"type": "fibonacci", "tests": "[]", "index": 3})


@pytest.mark.parametrize(
    "forged",
    [
        "b'[bad'",  # not JSON
        "b'{\"0\": 1}'",  # not a list
        "b'[0, 1, 5, 8]'",  # not strings
        'b\'["0", "1"]\'',  # too few
        "open(__file__).read().encode()",  # its own file, harness included
    ],
)
def test_code_that_writes_the_result_channel_itself_cannot_break_the_reward(forged):
    # A program may find the channel (it reads its own file) and write anything there, then
    # exit before the harness runs: the results are validated, and it earns no test.
    code = f"import os\nos.write(int(os.environ['AFM_RESULT_FD']), {forged})\nos._exit(0)\n"
    assert score("afm/code", f"<answer>{code}</answer>", "", FIB_INFO) == {
        "score": FORMAT_ONLY,
        "correct": 0,
        "format": 1,
    }


def test_a_scorer_failing_on_an_answer_scores_zero_and_says_why(monkeypatch):
    from afm_trainer.suites import qa

    def broken(answer, truth, info):
        raise TypeError("unhashable answer")

    monkeypatch.setattr(rewards, "suite_for_source", lambda source: dataclasses.replace(qa.SUITE, credit=broken))
    result = scored("afm/qa", "<answer>Kafen</answer>", "Kafen")
    assert (result["score"], result["correct"]) == (0.0, 0)
    assert result["reason"] == "the answer could not be scored: TypeError: unhashable answer"


def test_a_row_without_its_fields_is_still_an_error():
    with pytest.raises(ValueError, match="afm/algorithmic row 4"):
        score("afm/algorithmic", "<answer>1</answer>", "1", {"index": 4})


@pytest.mark.parametrize(
    "response, expected",
    [
        # A document (or a program's output) holding an answer is not the policy's answer.
        ("<search>Bob</search>\ntool\n<information>[1] Bob: <answer>Kafen</answer></information>", ZERO),
        # A document holding a tool tag does not make the policy's answer malformed.
        (
            "<search>Bob</search>\ntool\n<information>[1] Bob: see <search></information>\n<answer>Kafen</answer>",
            {"score": FULL, "correct": 1, "format": 1},
        ),
        # Cut off inside a tool turn: nothing after its opening is the policy's.
        ("<search>Bob</search>\ntool\n<information>[1] Bob: <answer>Kafen</answer>", ZERO),
    ],
)
def test_only_the_policys_own_text_is_scored(response, expected):
    assert score("afm/qa", response, "Kafen") == expected


DEGENERATE = {
    "answer openings": "<answer>" * 130_000,
    "search openings": "<search>a" * 112_000,
    "code openings": "<code>" * 170_000,
    "fence openings": "```python\n" * 100_000,
    "blank lines": "\n" * 1_000_000,
    "answer lines": "answer\n" * 143_000,
    "boxes": "\\boxed{" * 143_000,
    "information openings": "<information>" * 80_000,
}


@pytest.mark.parametrize("name", sorted(DEGENERATE))
def test_a_megabyte_of_degenerate_output_is_scored_in_well_under_a_second_each(name):
    import time

    from afm_trainer.suites.responses import code_of, first_answer
    from afm_trainer.traces.formats import student_answer, tool_calls

    text = DEGENERATE[name]
    assert len(text) >= 10**6
    info = {**FIB_INFO, "index": 0}
    for parse in (
        first_answer,
        code_of,
        tool_calls,
        student_answer,
        lambda t: score("afm/qa", t, "Kafen"),
        lambda t: score("afm/algorithmic", t, "5", {"type": "fibonacci", "difficulty": 2, "x": "5"}),
        lambda t: score("afm/code", t, "", info),
    ):
        started = time.perf_counter()
        parse(text)
        # A quadratic pattern takes minutes here; the bound leaves room for a slow host.
        assert time.perf_counter() - started < 1.0, (name, parse)


# --- the tag grammar itself (afm_trainer.suites.responses), hand-written cases ---

WELL_NESTED = {
    "<answer>Kafen</answer>": "Kafen",
    "<think>a</think><answer>Kafen</answer>": "Kafen",
    "<think>a</think><search>q</search><think>b</think><code>c</code><answer>Kafen</answer>": "Kafen",
    "<summary>s</summary>\n<think>a</think>\n<answer> Kafen </answer>\ntrailing text": "Kafen",
    # tool output is not the policy's text, whatever tags it shows
    "<search>q</search><information><think><answer>x</think></information><answer>Kafen</answer>": "Kafen",
}
INTERLEAVED = [
    "<think><answer></think></answer>",
    "<think>a<answer>Kafen</think></answer>",
    "<answer>Kafen<think></answer></think>",
    "<think>a<search>q</think></search><answer>Kafen</answer>",
    "<search>q<code>c</search></code><answer>Kafen</answer>",
    "<summary>s<think>a</summary></think><answer>Kafen</answer>",
    "<think><think>a</think></think><answer>Kafen</answer>",
    "<think>a<answer>Kafen</answer></think>",
]


@pytest.mark.parametrize("response", sorted(WELL_NESTED))
def test_well_nested_responses_have_their_answer(response):
    from afm_trainer.suites.responses import answer_of, code_of

    assert answer_of(response) == code_of(response) == WELL_NESTED[response]


@pytest.mark.parametrize("response", INTERLEAVED)
def test_interleaved_or_nested_tags_are_a_format_failure(response):
    from afm_trainer.suites.responses import answer_of, code_of

    assert answer_of(response) is None and code_of(response) is None
    assert score("afm/qa", response, "Kafen") == ZERO


def test_the_data_side_tag_check_refuses_interleaved_trace_tags_too():
    """A training turn (afm_trainer.models.special_tokens.tag_structure_problem) may nest
    trace tags but never interleave them."""
    from afm_trainer.models.special_tokens import tag_structure_problem

    assert tag_structure_problem("<think>a</think><search>q</search><answer>x</answer>") is None
    assert tag_structure_problem("<answer><think>a</think>x</answer>") is None  # nested, not interleaved
    assert tag_structure_problem("<think><answer></think></answer>") == "</think> closes <think> too early"
    assert tag_structure_problem("<summary>s<search>q</summary></search>") == "</summary> closes <summary> too early"
    assert tag_structure_problem("<answer>x</think>") == "</think> without its opening tag"
