"""Seed 004's evaluation of a yes/no student: accuracy, the labels it predicts, and the
ablations that show whether it uses the student draft in its prompt.

An item is ``{"id", "question", "answer", "student_draft"}``. A condition builds the
prompt with ``teacher_prompt``, the function the training data was written with, so the
evaluated format is the trained one (seed 004's phase B failed on a gap between them):

- ``question``: the question alone (phase A's format; for a draft-trained model this is
  the no-draft ablation);
- ``draft``: the question and the item's own draft;
- ``shuffled draft``: the question and another item's draft (a fixed derangement), so a
  model that reads the draft is misled and one that ignores it is not.
"""

from __future__ import annotations

import random
from collections import Counter

from afm_trainer.suites.responses import first_answer
from afm_trainer.traces.formats import student_answer, teacher_prompt

CONDITIONS = ("question", "draft", "shuffled draft")
LABELS = ("yes", "no")


def derangement(n: int, seed: int) -> list[int]:
    """A permutation of range(n) that moves every index (identity for n < 2)."""
    if n < 2:
        return list(range(n))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[(order.index(i) + 1) % n] for i in range(n)]  # each to the next in a random cycle


def condition_prompts(items: list[dict], condition: str, seed: int = 0) -> list[list[dict]]:
    """The chat prompt of every item under a condition."""
    if condition == "question":
        drafts = [None] * len(items)
    elif condition == "draft":
        drafts = [it["student_draft"] for it in items]
    elif condition == "shuffled draft":
        drafts = [items[j]["student_draft"] for j in derangement(len(items), seed)]
    else:
        raise ValueError(f"unknown condition {condition!r} (known: {', '.join(CONDITIONS)})")
    return [[{"role": "user", "content": teacher_prompt(it["question"], d)}] for it, d in zip(items, drafts)]


def predicted_label(response: str) -> str:
    """ "yes" or "no" from a response's first <answer>, "none" for anything else."""
    answer = (first_answer(response) or "").strip().lower()
    return answer if answer in LABELS else "none"


def score(items: list[dict], responses: list[str]) -> dict:
    """Accuracy, the predicted-label counts (a collapse to one answer shows here) and
    each item's correctness (for paired comparisons)."""
    labels = [predicted_label(r) for r in responses]
    correct = {it["id"]: float(label == it["answer"]) for it, label in zip(items, labels)}
    return {
        "accuracy": sum(correct.values()) / max(len(items), 1),
        "predicted": {label: labels.count(label) for label in (*LABELS, "none")},
        "correct_by_item": correct,
    }


def evaluate(model, tokenizer, items: list[dict], condition: str, max_new_tokens: int = 192) -> dict:
    """``score`` of the model's greedy responses under a condition, with the responses."""
    from afm_trainer.eval.lm import generate

    responses = generate(model, tokenizer, condition_prompts(items, condition), max_new_tokens=max_new_tokens)
    return {**score(items, responses), "examples": responses[:3], "responses": responses}


def draft_answer_baseline(items: list[dict]) -> dict:
    """Answering with the draft's own answer: what a model that only copies it scores."""
    responses = [f"<answer>{(student_answer(it['student_draft']) or '').lower()}</answer>" for it in items]
    return score(items, responses)


def majority_baseline(train_answers: list[str], items: list[dict]) -> dict:
    majority = Counter(a.lower() for a in train_answers).most_common(1)[0][0]
    return score(items, [f"<answer>{majority}</answer>"] * len(items))
