"""What a task suite is: one object that data building, rewards, evaluation and reports
all use, registered once by name (``register``) and found by name or data source."""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from afm_trainer.world.algorithmic import normalise

# verl's RL rows: ``extra_info`` fields every suite may fill (None where it has nothing).
EXTRA_INFO_FIELDS = ("index", "split", "id", "type", "difficulty", "x", "tests")


class SuiteInputError(Exception):
    """An input a suite cannot build data from (one line for the user)."""


class RowError(ValueError):
    """An RL row a suite cannot score (a field missing or unreadable): a bug in the data,
    raised loudly, never the model's doing."""


@dataclass
class RLDataRequest:
    """What to build RL rows from (afm_trainer.data.rl_data)."""

    out: str  # output folder (a suite may write its rejects there)
    world: str | None = None  # a demo world folder (afm_trainer.world.make_world): its held-out sets and corpus
    difficulties: tuple[int, ...] = tuple(range(1, 11))
    n_train: int = 1000  # rows per suite, at most
    n_val: int = 100
    qa_file: str | None = None  # the user's {"question", "answer"} lines, for the qa suite


@dataclass
class EvalRun:
    """What a suite's ``evaluate`` gets besides its items."""

    model: object
    tokenizer: object
    max_new_tokens: int
    corpus: str | None = None  # the search tool's corpus, for agents that search
    max_searches: int = 4
    temperature: float = 0.0  # 0: greedy answers; above: sampled ones (single-turn suites)
    seed: int = 0  # the sampled answers' random streams


@dataclass(frozen=True)
class Suite:
    name: str
    description: str  # one sentence for reports
    data_source: str  # the RL rows' data_source; the reward finds the suite by it
    agent: str  # verl's agent loop for its RL rows: single_turn_agent, or afm_tag_agent (tools called by tags)
    heldout_file: str  # its held-out set in a world folder: heldout/<heldout_file>
    group_key: str  # what results are broken down by besides difficulty ("type", "hops")
    max_new_tokens: int  # generation budget per turn when evaluating
    easy_tiers: tuple[str, ...]  # the difficulties a small model is expected to learn
    rl_rows: Callable[[RLDataRequest], tuple[list[dict], list[dict]]]  # -> (train, val) rows
    extract: Callable[[str], str | None]  # a response -> what the reward scores (None: malformed)
    # (extracted, ground_truth, extra_info) -> 0..1; the ground truth is a row's text, or
    # the object a foreign source's rows carry (qa: Search-R1's {"target": [aliases]})
    credit: Callable[[str, str | dict, dict], float]
    evaluate: Callable[[EvalRun, list[dict]], list[dict]]  # held-out items -> scored rows
    training_answers: Callable[[str], dict[str, list[str]]]  # world folder -> answers by group
    # The nearest-training-example baseline's hooks (afm_trainer.eval.scoring.nearest_example_baseline):
    prompt_of: Callable[[dict], str] | None = None  # a held-out item -> the prompt its model sees
    score: Callable[[dict, str], dict] | None = None  # (held-out item, completion) -> its scored row
    # (world folder, min_score) -> (prompt, answer or program) of the world's training traces
    training_examples: Callable[[str, float | None], list[tuple[str, str]]] | None = None
    # Data sources of other projects' RL rows that this suite scores as they are (qa:
    # Search-R1's nq, hotpotqa...), so their parquet trains without conversion.
    foreign_sources: tuple[str, ...] = ()


SUITES: dict[str, Suite] = {}


def register(suite: Suite) -> Suite:
    SUITES[suite.name] = suite
    return suite


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r} (known: {', '.join(SUITES)})")
    return SUITES[name]


def suite_for_source(data_source: str) -> Suite:
    """The suite that scores rows of ``data_source``: its own rows, or a foreign source's."""
    for suite in SUITES.values():
        if suite.data_source == data_source:
            return suite
    for suite in SUITES.values():
        if data_source in suite.foreign_sources:
            return suite
    known = sorted(s.data_source for s in SUITES.values())
    foreign = sorted(source for s in SUITES.values() for source in s.foreign_sources)
    raise ValueError(
        f"unknown data_source {data_source!r}; the suites score {known}"
        + (f" and other projects' {foreign}" if foreign else "")
    )


def rl_row(suite: Suite, prompt: str, ground_truth: str, **extra) -> dict:
    """One row of verl's RL format for ``suite``."""
    return {
        "data_source": suite.data_source,
        "prompt": [{"role": "user", "content": prompt}],
        "ability": suite.name,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {name: extra.get(name) for name in EXTRA_INFO_FIELDS},
        "agent_name": suite.agent,
    }


def read_jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise SuiteInputError(
            f"file not found: {path} (write a demo world with python -m afm_trainer.world.make_world)"
        )
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sample(items: list, n: int, seed: int) -> list:
    """n items in a seeded random order."""
    items = list(items)
    random.Random(seed).shuffle(items)
    return items[:n]


def scored_row(
    item_id: str, group: dict, difficulty, gold: str, predicted: str | None, correct: bool, completion: str
) -> dict:
    """One evaluated item, the shape every suite's ``evaluate`` returns."""
    return {
        "id": item_id,
        **group,
        "difficulty": difficulty,
        "gold": normalise(gold),
        "predicted": normalise(predicted) if predicted is not None else None,
        "correct": bool(correct),
        "completion": completion,
    }


def trace_examples(traces: str, prompt_key: str, min_score: float | None = None) -> list[tuple[str, str]]:
    """(prompt, answer) of every record of a trace file that has both, leaving out those
    scored below ``min_score`` as the training data's conversion does (what the
    nearest-training-example baseline retrieves from)."""
    return [
        (record[prompt_key], record["answer"])
        for record in read_jsonl(traces)
        if isinstance(record.get(prompt_key), str) and isinstance(record.get("answer"), str) and kept(record, min_score)
    ]


def kept(record: dict, min_score: float | None) -> bool:
    """Whether training keeps a trace: no threshold, or a score not below it."""
    return min_score is None or (record.get("score") is not None and record["score"] >= min_score)


def answers_by_group(traces: str, group_key: str) -> dict[str, list[str]]:
    """The training answers of a trace file by group (what the majority-answer baseline answers)."""
    answers = defaultdict(list)
    for record in read_jsonl(traces):
        if "answer" in record:
            answers[str(record.get(group_key))].append(record["answer"])
    return answers
