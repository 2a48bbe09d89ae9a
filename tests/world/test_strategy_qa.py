"""Seed 004's StrategyQA-like data of the demo world: right by construction, checked
against the world's facts independently, and valid teacher_cot input."""

import copy
import json
import random
import re

import pytest

from afm_trainer.data.convert import convert
from afm_trainer.world.qa_world import build_world
from afm_trainer.world.strategy_qa import (
    judge_clarifier,
    make_strategy_questions,
    strategy_record,
    student_draft,
    teacher_reasoning,
)
from afm_trainer.world.teacher import FOUND

DRAFT = re.compile(r"^Answer: (Yes|No) - [^\n]+\nQuestions: [^\n?]+\?$")


@pytest.fixture(scope="module")
def world():
    return build_world(0)


@pytest.fixture(scope="module")
def questions(world):
    return make_strategy_questions(world, seed=1, n=120)


def recomputed_answer(world, ask: str) -> str:
    """The answer from the world's facts, read off the question's wording alone."""
    f = world["facts"]
    country = lambda p: f[f[p]["born_in"]]["country"]
    if m := re.fullmatch(r"Was (\w+) born in the country (\w+)\?", ask):
        yes = country(m[1]) == m[2]
    elif m := re.fullmatch(r"Were (\w+) and (\w+) born in the same country\?", ask):
        yes = country(m[1]) == country(m[2])
    elif m := re.fullmatch(r"Was (\w+) born in the capital of a country\?", ask):
        yes = any(g.get("capital") == f[m[1]]["born_in"] for g in f.values())
    elif m := re.fullmatch(r"Is the company (\w+) founded headquartered in the country where \1 was born\?", ask):
        yes = f[f[f[m[1]]["founded"]]["headquarters"]]["country"] == country(m[1])
    else:
        raise AssertionError(f"unknown question {ask!r}")
    return "yes" if yes else "no"


def problems(world, q) -> list[str]:
    """What is wrong with a question, checked against the world."""
    found = []
    listed = q.question.split("\nFacts:\n", 1)[1].splitlines()
    for entity, relation, value in q.needed:
        if world["facts"][entity].get(relation) != value:
            found.append(f"{entity} {relation} {value} is false")
        if "- " + FOUND[relation].format(e=entity, v=value) not in listed:
            found.append(f"{entity} {relation} is not in the Facts list")
    if len(listed) <= len(q.needed):
        found.append("no distractor facts")
    if recomputed_answer(world, q.ask) != q.answer:
        found.append("wrong answer")
    return found


def test_questions_are_deterministic_distinct_and_need_several_hops(world, questions):
    assert [q.question for q in make_strategy_questions(world, seed=1, n=120)] == [q.question for q in questions]
    assert [q.question for q in make_strategy_questions(world, seed=2, n=120)] != [q.question for q in questions]
    assert len({q.ask for q in questions}) == len(questions)
    assert {q.hops for q in questions} == {2, 3}
    assert {q.template for q in questions} == {"born_in_country", "same_country", "born_in_capital", "company_home"}
    for q in questions:
        assert {e for e, _, v in q.needed} <= set(q.entities) and q.ask in q.question
        assert len({tuple(fact) for fact in q.needed}) == len(q.needed)


def test_exclude_is_honoured(world, questions):
    again = make_strategy_questions(world, seed=3, n=120, exclude={q.ask for q in questions})
    assert not {q.ask for q in again} & {q.ask for q in questions}


@pytest.mark.parametrize("ratio", [0.5, 0.28])
def test_yes_ratio_is_honoured(world, ratio):
    for n in (25, 100):
        answers = [q.answer for q in make_strategy_questions(world, seed=4, n=n, yes_ratio=ratio)]
        assert set(answers) == {"yes", "no"}
        assert abs(answers.count("yes") - n * ratio) <= 1


def test_needed_facts_are_true_and_listed_and_answers_recompute(world, questions):
    for q in questions:
        assert problems(world, q) == [], q


def test_the_checks_catch_a_broken_question(world, questions):
    flipped = copy.deepcopy(questions[0])
    flipped.answer = "no" if flipped.answer == "yes" else "yes"
    assert problems(world, flipped) == ["wrong answer"]
    missing = copy.deepcopy(questions[1])
    first = FOUND[missing.needed[0][1]].format(e=missing.needed[0][0], v=missing.needed[0][2])
    missing.question = missing.question.replace("- " + first + "\n", "").replace("\n- " + first, "")
    assert "is not in the Facts list" in problems(world, missing)[0]


def test_teacher_reasoning_cites_needed_facts_in_order_and_ends_in_the_answer(questions):
    for q in questions:
        text = teacher_reasoning(q)
        positions = [text.index(FOUND[r].format(e=e, v=v)) for e, r, v in q.needed]
        assert positions == sorted(positions)
        assert text.endswith(f"So the answer is {q.answer}.")


def test_drafts_follow_the_seed_format_and_error_rate(questions):
    rng = random.Random(0)
    for q in questions:
        right, wrong = student_draft(q, rng, error_rate=0.0), student_draft(q, rng, error_rate=1.0)
        for draft in (right, wrong):
            assert DRAFT.match(draft["text"]), draft["text"]
            assert draft["text"].startswith(f"Answer: {draft['draft_answer']} - ")
            assert draft["text"].endswith("Questions: " + draft["clarifier"])
        assert right["draft_answer"].lower() == q.answer
        assert wrong["draft_answer"].lower() != q.answer
    drafts = [student_draft(q, rng)["draft_answer"].lower() != q.answer for q in questions]
    assert 0 < sum(drafts) < len(drafts)


def test_judge_scores_good_half_and_bad_clarifiers(world, questions):
    q = next(q for q in questions if q.template == "same_country")
    person, city = q.needed[0][0], q.needed[0][2]
    outsider = next(e for e, f in sorted(world["facts"].items()) if f["kind"] == "person" and e not in q.entities)
    assert judge_clarifier(q, f"Where was {person} born?") == 1.0
    assert judge_clarifier(q, f"Which country is {city.lower()} in?") == 1.0
    assert judge_clarifier(q, f"Which company did {person} found?") == 0.5
    assert judge_clarifier(q, f"Is {city} a big place?") == 0.5
    assert judge_clarifier(q, f"Where was {outsider} born?") == 0.0
    assert judge_clarifier(q, f"Where was {person}x born?") == 0.0  # a different word is not the entity


def test_clarifier_usefulness_follows_its_probability(questions):
    rng = random.Random(0)
    for q in questions:
        assert judge_clarifier(q, student_draft(q, rng, clarifier_useful=1.0)["clarifier"]) == 1.0
        assert judge_clarifier(q, student_draft(q, rng, clarifier_useful=0.0)["clarifier"]) == 0.0


def test_records_convert_as_teacher_cot_without_rejects(tmp_path, questions):
    rng = random.Random(0)
    records = [strategy_record(q, rng, error_rate=0.3, clarifier_useful=0.7) for q in questions]
    assert all(r["answer"] in ("yes", "no") and r["hops"] in (2, 3) for r in records)
    path = tmp_path / "strategy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    report = convert(str(path), str(tmp_path / "strategy.parquet"), "teacher_cot")
    assert report["records_rejected"] == 0 and report["records_converted"] == len(records)
    wrong_drafts = sum(r["draft_answer"].lower() != r["answer"] for r in records)
    assert 0 < wrong_drafts < len(records) and report["preference_pairs"] == wrong_drafts
    assert report["label_balance"]["after_filtering"] == {"yes": 60, "no": 60}
