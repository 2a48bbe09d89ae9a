"""The algorithmic suite: the model reasons step by step and gives the answer itself.

RL rows: tasks of seed 42 for training; validation is the held-out suite of a world
(what the evaluation scores) or seed 999's. No training prompt is a held-out one.
"""

from __future__ import annotations

import json
import math
import os

from afm_trainer.suites.base import (
    RLDataRequest,
    RowError,
    Suite,
    answers_by_group,
    read_jsonl,
    register,
    rl_row,
    sample,
    scored_row,
    trace_examples,
)
from afm_trainer.suites.responses import answer_of, first_answer
from afm_trainer.world.algorithmic import TYPES, Task, generate_suite, verify

TRAIN_SEED, VAL_SEED = 42, 999  # make_world's defaults: its training pools and held-out sets


def per_cell(n: int, difficulties) -> int:
    """Tasks per (type, difficulty) so that the cells together hold at least n."""
    return max(1, math.ceil(n / (len(TYPES) * len(difficulties))))


def task_of_item(item: dict) -> Task:
    return Task(item["id"], item["type"], item["difficulty"], item["prompt"], item["answer"], item.get("x"))


def heldout_tasks(request: RLDataRequest) -> list[Task]:
    """The held-out algorithmic tasks: the world's (what the evaluation scores) or seed 999's."""
    if not request.world:
        return generate_suite(
            VAL_SEED, per_cell(request.n_val, request.difficulties), difficulties=request.difficulties
        )
    items = read_jsonl(os.path.join(request.world, "heldout", "algorithmic.jsonl"))
    return [task_of_item(it) for it in items if it["difficulty"] in request.difficulties]


def task_of_extra_info(extra_info: dict, answer: str) -> Task:
    """The Task an RL row describes. JSON turns tuples into lists (two_sum's x is
    (values, target)); the verifier and solutions only unpack it, so a list does."""
    x = json_field(extra_info, "x")
    return Task(
        str(extra_info.get("id") or ""), extra_info["type"], int(extra_info.get("difficulty") or 0), "", answer, x
    )


def json_field(extra_info: dict, key: str):
    """A field stored as JSON text in an RL row (parquet holds mixed-type values badly)."""
    value = extra_info[key]
    return json.loads(value) if isinstance(value, str) else value


def _row(task: Task) -> dict:
    return rl_row(
        SUITE,
        task.prompt,
        task.answer,
        id=task.task_id,
        type=task.type,
        difficulty=task.difficulty,
        x=json.dumps(task.x),
    )


def rl_rows(request: RLDataRequest) -> tuple[list[dict], list[dict]]:
    heldout = heldout_tasks(request)
    # Exclude the whole held-out set, not only the part sampled for validation.
    n = per_cell(request.n_train, request.difficulties)
    train = generate_suite(TRAIN_SEED, n, difficulties=request.difficulties, exclude={t.prompt for t in heldout})
    return (
        [_row(t) for t in sample(train, request.n_train, TRAIN_SEED)],
        [_row(t) for t in sample(heldout, request.n_val, VAL_SEED)],
    )


def credit(answer: str, ground_truth: str, extra_info: dict) -> float:
    try:
        task = task_of_extra_info(extra_info, ground_truth)
    except (KeyError, TypeError, ValueError) as exc:
        raise RowError(f"afm/algorithmic row {extra_info.get('index')}: {exc!r}") from None
    return 1.0 if verify(task, answer) else 0.0


def prompt_of(item: dict) -> str:
    return item["prompt"]


def score(item: dict, completion: str) -> dict:
    """A held-out item's row: the completion's first answer, judged by the type's verifier."""
    predicted = first_answer(completion)
    correct = verify(task_of_item(item), predicted)
    return scored_row(
        item["id"], {"type": item["type"]}, item["difficulty"], item["answer"], predicted, correct, completion
    )


def evaluate(run, items: list[dict]) -> list[dict]:
    from afm_trainer.eval.lm import generate

    prompts = [[{"role": "user", "content": prompt_of(it)}] for it in items]
    completions = generate(
        run.model, run.tokenizer, prompts, run.max_new_tokens, temperature=run.temperature, seed=run.seed
    )
    return [score(it, completion) for it, completion in zip(items, completions)]


def teacher_traces(world: str) -> str:
    return os.path.join(world, "traces", "teacher_cot.jsonl")


def answers_by_type(world: str) -> dict[str, list[str]]:
    """The teacher's training answers per problem type (the majority-answer baseline)."""
    return answers_by_group(teacher_traces(world), "type")


def training_examples(world: str, min_score: float | None = None) -> list[tuple[str, str]]:
    """The teacher's training (question, answer) pairs (the nearest-training-example baseline)."""
    return trace_examples(teacher_traces(world), "question", min_score)


SUITE = register(
    Suite(
        name="algorithmic",
        description="The model reasons step by step and gives the answer itself.",
        data_source="afm/algorithmic",
        agent="single_turn_agent",
        heldout_file="algorithmic.jsonl",
        group_key="type",
        max_new_tokens=96,
        easy_tiers=("1", "2", "3"),
        rl_rows=rl_rows,
        extract=answer_of,
        credit=credit,
        evaluate=evaluate,
        training_answers=answers_by_type,
        prompt_of=prompt_of,
        score=score,
        training_examples=training_examples,
    )
)
