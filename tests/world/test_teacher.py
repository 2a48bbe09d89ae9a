"""The scripted teacher and make_world: right by construction, noisy on request."""

import json
import random
import subprocess
import sys
from collections import Counter

import pytest

from afm_trainer.data.convert import convert
from afm_trainer.tools.search import SearchIndex
from afm_trainer.world.algorithmic import generate_suite, verify
from afm_trainer.world.qa_world import build_world, make_questions
from afm_trainer.world.teacher import (
    Noise,
    agent_chain_record,
    balance_yes_no,
    review,
    search_agent_record,
    teacher_cot_record,
)


@pytest.fixture(scope="module")
def world():
    world = build_world(0)
    return world, SearchIndex(world["documents"])


def test_clean_search_traces_use_real_results_and_reach_the_gold_answer(world):
    world, index = world
    for q in make_questions(world, 5, 30):
        record = search_agent_record(q, index, random.Random(0))
        assert record["trace"][-1] == {"type": "CorrectAnswer", "content": q.answer}
        results = [s for s in record["trace"] if s["type"] == "search_result"]
        assert len(results) == q.hops
        for (entity, _, value), result in zip(q.path, results):
            assert any(d["title"] == entity and value in d["content"] for d in result["documents"])


def test_clean_agent_chains_pass_review_and_their_answers_verify():
    tasks = generate_suite(11, 1)
    for task in tasks:
        record = agent_chain_record(task, random.Random(0))
        assert record["trajectory"][2]["output"].endswith("Approved.")
        assert verify(task, record["answer"])
        assert [s["agent"] for s in record["trajectory"]] == ["Planner", "Coder", "Reviewer"]
        assert review(task, record["trajectory"][1]["output"])[0]


def test_wrong_agent_chains_approve_a_program_the_sandbox_fails_and_score_zero():
    task = generate_suite(11, 1, types=["fibonacci"], difficulties=[5])[0]
    record = agent_chain_record(task, random.Random(0), kind="wrong")
    coder, reviewer = record["trajectory"][1]["output"], record["trajectory"][2]["output"]
    assert reviewer.endswith("Approved.") and record["score"] == 0.0
    assert not review(task, coder)[0]
    assert not verify(task, record["answer"])


def test_a_retried_chain_rewrites_a_program_the_sandbox_really_fails():
    tasks = generate_suite(11, 1, difficulties=[2, 3])
    records = [agent_chain_record(t, random.Random(0), retry=1.0) for t in tasks]
    retried = [(t, r) for t, r in zip(tasks, records) if len(r["trajectory"]) == 5]
    assert len(retried) > len(tasks) / 2
    for task, record in retried:
        agents = [s["agent"] for s in record["trajectory"]]
        assert agents == ["Planner", "Coder", "Reviewer", "Coder", "Reviewer"]
        first, rejection, second, approval = (s["output"] for s in record["trajectory"][1:])
        assert rejection.endswith("Rejected.") and approval.endswith("Approved.")
        assert not review(task, first)[0] and review(task, second)[0]
        assert record["score"] == 1.0 and verify(task, record["answer"])
    # chains the bug does not break are not retried (fizzbuzz's bug only hits multiples of 15)
    assert all(len(r["trajectory"]) == 3 for t, r in zip(tasks, records) if (t, r) not in retried)


def test_the_retry_share_leaves_the_other_records_of_a_world_unchanged():
    tasks = generate_suite(11, 1)
    rng_a, rng_b = random.Random(5), random.Random(5)
    for t in tasks:
        agent_chain_record(t, rng_a, "wrong")
        agent_chain_record(t, rng_b, "wrong", retry=1.0)
    assert rng_a.random() == rng_b.random()


def test_teacher_cot_answers_verify_and_perturbed_ones_fail():
    rng = random.Random(0)
    for task in generate_suite(13, 1):
        assert verify(task, teacher_cot_record(task, rng)["answer"])
        assert not verify(task, teacher_cot_record(task, rng, kind="wrong")["answer"])


def test_noise_and_label_balance_knobs():
    rng = random.Random(0)
    kinds = Counter(Noise(wrong=0.2, malformed=0.1).draw(rng) for _ in range(5000))
    assert abs(kinds["wrong"] / 5000 - 0.2) < 0.03 and abs(kinds["malformed"] / 5000 - 0.1) < 0.03
    tasks = generate_suite(3, 20, types=["parentheses", "is_palindrome"])
    balanced = balance_yes_no(tasks, 0.3, rng)
    labels = Counter(t.answer for t in balanced)
    assert abs(labels["yes"] / (labels["yes"] + labels["no"]) - 0.3) < 0.02


def test_make_world_writes_every_format_and_disjoint_held_out_sets(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "afm_trainer.world.make_world",
            "--out",
            str(out),
            "--n_train",
            "150",
            "--n_heldout",
            "110",
            "--wrong",
            "0.1",
            "--malformed",
            "0.1",
            "--worked_solutions_per_cell",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.load(open(out / "manifest.json"))
    heldout_prompts = {json.loads(line)["prompt"] for line in open(out / "heldout" / "algorithmic.jsonl")}
    heldout_questions = {json.loads(line)["question"] for line in open(out / "heldout" / "qa.jsonl")}
    train_prompts = {json.loads(line).get("task") for line in open(out / "traces" / "agent_chain.jsonl")}
    train_questions = {json.loads(line).get("question") for line in open(out / "traces" / "search_agent.jsonl")}
    assert not heldout_prompts & train_prompts and not heldout_questions & train_questions
    # the worked solutions are other tasks than teacher_cot's, and none of them held out
    worked = [json.loads(line) for line in open(out / "traces" / "worked_solutions.jsonl")]
    teacher_questions = {json.loads(line).get("question") for line in open(out / "traces" / "teacher_cot.jsonl")}
    assert len(worked) > 11 * 10 * 3 * 0.8
    assert len({w.get("question") for w in worked} - teacher_questions) > len(worked) * 0.6
    assert not heldout_prompts & {w.get("question") for w in worked}
    for fmt in ("search_agent", "agent_chain", "teacher_cot", "worked_solutions"):
        report = convert(
            str(out / "traces" / f"{fmt}.jsonl"),
            str(tmp_path / f"{fmt}.parquet"),
            "teacher_cot" if fmt == "worked_solutions" else fmt,
            "stepwise",
            min_score=0.5,
        )
        assert report["records_in"] == manifest["counts"][fmt]
        assert 0 < report["records_rejected"] < report["records_in"] * 0.4  # the noise, filtered and reported
        assert report["records_converted"] > report["records_in"] * 0.6


def test_a_world_without_programs_of_unknown_types_is_refused(tmp_path):
    from afm_trainer.world.make_world import make_world

    with pytest.raises(ValueError, match="unknown problem types"):
        make_world(str(tmp_path), n_train=20, n_heldout=110, types_without_programs=["fibonaci"])
    assert not list(tmp_path.iterdir())  # refused before writing anything
