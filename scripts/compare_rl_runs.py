#!/usr/bin/env python
"""Compare runs of the RL recipe (rollout seeds, GRPO against PPO) in one table and one plot.

    python scripts/compare_rl_runs.py OUT_DIR [OUT_DIR ...] --out DIR [--window 5]

Each OUT_DIR is a `recipes/train_grpo.sh` output folder. Writes DIR/comparison.md (reward
of the first and last five steps, greedy held-out accuracy at the first and last validation
with the change paired by item and its standard error, median step time) and
DIR/reward_curves.png (rewards smoothed over --window steps, averaged per algorithm).
"""

import argparse
import sys

from afm_trainer.recipes.grpo.report import compare_runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="output folders of recipes/train_grpo.sh")
    parser.add_argument("--out", required=True)
    parser.add_argument("--window", type=int, default=5, help="steps in the reward's moving average")
    args = parser.parse_args(argv)
    try:
        compare_runs(args.runs, args.out, args.window)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
