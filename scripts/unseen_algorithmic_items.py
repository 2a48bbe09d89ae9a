"""More held-out algorithmic items for a world: tasks no trace and no held-out item of it holds.

    python scripts/unseen_algorithmic_items.py WORLD OUT.jsonl [--per_cell 12] [--difficulties 1,2,3] [--seed 777]

A world's held-out suite has one item per (type, difficulty): 33 easy items decide a
comparison with the majority answer by a few items. This writes a larger set in the
held-out format (evaluate it with ``python -m afm_trainer.eval --suite algorithmic --data
OUT.jsonl``) and prints the majority answer's accuracy on it: the most frequent training
answer of the item's type, from the world's teacher traces, as the demo's report has it.
Cells whose prompts the world has used up (Fibonacci's and fizzbuzz's easy ones) yield
fewer items or none.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

from afm_trainer.eval.scoring import majority_baseline
from afm_trainer.suites import get_suite
from afm_trainer.suites.base import read_jsonl
from afm_trainer.world.algorithmic import DIFFICULTIES, generate_suite, normalise
from afm_trainer.world.make_world import write_jsonl


def unseen_items(world: str, per_cell: int, difficulties: list[int], seed: int) -> list[dict]:
    """Fresh tasks of every (type, difficulty), none with a prompt of the world's traces or held-out items."""
    used = {item["prompt"] for item in read_jsonl(os.path.join(world, "heldout", "algorithmic.jsonl"))}
    traces = os.path.join(world, "traces")
    for name in sorted(os.listdir(traces)):
        for record in read_jsonl(os.path.join(traces, name)):
            used.update(str(record[k]) for k in ("question", "task") if k in record)  # malformed ones too
    return [
        {"id": t.task_id, "prompt": t.prompt, "answer": t.answer, "type": t.type, "difficulty": t.difficulty, "x": t.x}
        for t in generate_suite(seed, per_cell, difficulties=difficulties, exclude=used)
    ]


def difficulty_list(text: str) -> list[int]:
    """Parse "1,2,3" into [1, 2, 3]; anything else is one argparse error line."""
    try:
        difficulties = [int(d) for d in text.split(",")]
    except ValueError:
        difficulties = []
    if not difficulties or not set(difficulties) <= set(DIFFICULTIES):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give difficulties {DIFFICULTIES[0]}-{DIFFICULTIES[-1]} separated by commas"
        )
    return difficulties


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("world", help="a world folder (afm_trainer.world.make_world; the demo's: OUT/embedded/world)")
    parser.add_argument("out", help="the JSONL to write")
    parser.add_argument("--per_cell", type=int, default=12)
    parser.add_argument("--difficulties", type=difficulty_list, default="1,2,3")
    parser.add_argument("--seed", type=int, default=777, help="task seed (the world's are 42 and 999)")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.world, "heldout", "algorithmic.jsonl")):
        print(f"error: {args.world} is not a world folder (no heldout/algorithmic.jsonl)", file=sys.stderr)
        return 2
    items = unseen_items(args.world, args.per_cell, args.difficulties, args.seed)
    write_jsonl(args.out, items)
    suite = get_suite("algorithmic")  # the majority answer as the demo's report computes it
    rows = [{**item, "gold": normalise(str(item["answer"]))} for item in items]
    majority = majority_baseline(suite.training_answers(args.world), rows, suite.group_key)["overall"]
    by_type = sorted(Counter(item["type"] for item in items).items())
    print(f"wrote {len(items)} items to {args.out} ({', '.join(f'{t} {n}' for t, n in by_type)})")
    print(f"majority answer: {majority:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
