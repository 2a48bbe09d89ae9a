"""A new task suite is one module: register it, and data building, the reward and the
evaluation all use it (shown here with a toy suite defined in this file)."""

import json

import pyarrow.parquet as pq
import pytest

from afm_trainer.data.rl_data import make_rl_data
from afm_trainer.eval.scoring import evaluate_suite
from afm_trainer.suites import SUITES, RLDataRequest, Suite, register, rl_row
from afm_trainer.suites.base import scored_row
from afm_trainer.suites.responses import answer_of, first_answer
from afm_trainer.verl_ext.rewards import FORMAT_WEIGHT, compute_score

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger"]


def _rl_rows(request: RLDataRequest):
    rows = [rl_row(TOY, f"Spell backwards: {w}", w[::-1], id=w, type="reverse", difficulty=1) for w in WORDS]
    return rows[:4], rows[4:]


def _evaluate(run, items):
    from afm_trainer.eval.lm import generate

    completions = generate(
        run.model, run.tokenizer, [[{"role": "user", "content": it["prompt"]}] for it in items], run.max_new_tokens
    )
    rows = []
    for it, completion in zip(items, completions):
        predicted = first_answer(completion)
        correct = predicted is not None and predicted == it["answer"]
        rows.append(scored_row(it["id"], {"type": "reverse"}, 1, it["answer"], predicted, correct, completion))
    return rows


TOY = Suite(
    name="toy",
    description="Spell a word backwards.",
    data_source="afm/toy",
    agent="single_turn_agent",
    heldout_file="toy.jsonl",
    group_key="type",
    max_new_tokens=8,
    easy_tiers=("1",),
    rl_rows=_rl_rows,
    extract=answer_of,
    credit=lambda answer, ground_truth, extra_info: float(answer == ground_truth),
    evaluate=_evaluate,
    training_answers=lambda world: {"reverse": [w[::-1] for w in WORDS]},
)


@pytest.fixture
def toy_suite():
    register(TOY)
    yield TOY
    SUITES.pop("toy")


def test_a_registered_suite_builds_rl_data_is_rewarded_and_evaluated(toy_suite, tmp_path, nano_model):
    counts = make_rl_data(["toy"], RLDataRequest(str(tmp_path / "rl")))
    assert counts == {"train": {"afm/toy": 4}, "val": {"afm/toy": 2}}
    row = pq.read_table(tmp_path / "rl" / "val.parquet").to_pylist()[0]
    assert row["agent_name"] == "single_turn_agent" and row["ability"] == "toy"

    truth = row["reward_model"]["ground_truth"]
    right = compute_score(row["data_source"], f"<answer>{truth}</answer>", truth, row["extra_info"])
    wrong = compute_score(row["data_source"], "<answer>nope</answer>", truth, row["extra_info"])
    assert right == {"score": FORMAT_WEIGHT + 1.0, "correct": 1, "format": 1, "reason": ""}
    assert wrong == {"score": FORMAT_WEIGHT, "correct": 0, "format": 1, "reason": ""}

    heldout = tmp_path / "toy.jsonl"
    heldout.write_text(
        "".join(json.dumps({"id": w, "prompt": f"Spell backwards: {w}", "answer": w[::-1]}) + "\n" for w in WORDS)
    )
    result = evaluate_suite(nano_model, "toy", str(heldout))
    assert result["suite"] == "toy" and result["n"] == len(WORDS) and set(result["by_group"]) == {"reverse"}
    assert len(result["predictions"]) == len(WORDS)  # the untrained model answers (wrongly), every item scored


def test_an_unknown_suite_or_data_source_is_named_in_the_error(tmp_path):
    with pytest.raises(KeyError, match="unknown suite 'nope'"):
        make_rl_data(["nope"], RLDataRequest(str(tmp_path)))
    with pytest.raises(ValueError, match="unknown data_source 'afm/nope'"):
        compute_score("afm/nope", "<answer>x</answer>", "x", {})
