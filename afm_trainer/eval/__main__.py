"""Evaluate a model on a held-out suite (any registered in afm_trainer.suites).

    python -m afm_trainer.eval --model CKPT --suite {algorithmic,code,qa} --data FILE --out DIR
        [--corpus corpus.jsonl] [--limit N] [--max_new_tokens N]

HF generation on CPU, greedy by default, prompts in the chat format the model was
trained in. ``code`` takes the algorithmic held-out file and asks for a program instead
of an answer: the model writes ``solve(x)`` from a solved example of the item's kind,
and the sandbox runs it on the item's input (seed 003's protocol). ``qa`` runs the model
as a search agent: when it closes a ``</search>`` the query goes to the BM25 tool and the
results come back as an ``<information>`` tool turn, up to --max_searches times.
Writes DIR/results.json (accuracy overall, by type or hops and by difficulty, format
validity, predicted-label distribution next to the gold one) and DIR/predictions.jsonl,
and prints a short table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from afm_trainer.eval.scoring import evaluate_suite
from afm_trainer.suites import SUITES


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate a model on a held-out suite.")
    parser.add_argument("--model", required=True, help="HF model folder (a checkpoint's huggingface/)")
    parser.add_argument("--suite", required=True, choices=sorted(SUITES))
    parser.add_argument(
        "--data", required=True, help="held-out JSONL (a world's heldout/*.jsonl, from afm_trainer.world.make_world)"
    )
    parser.add_argument(
        "--corpus", default=None, help="qa: the world's corpus.jsonl (default: the one of --data's world folder)"
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--max_new_tokens", type=int, default=None, help="per turn (default: the suite's own budget)")
    parser.add_argument("--max_searches", type=int, default=4)
    args = parser.parse_args(argv)
    for path in (args.model, args.data):
        if not os.path.exists(path):
            print(f"error: not found: {path}", file=sys.stderr)
            return 2
    corpus = args.corpus or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(args.data))), "corpus.jsonl")
    results = evaluate_suite(
        args.model, args.suite, args.data, corpus, args.limit, args.max_new_tokens, args.max_searches
    )
    os.makedirs(args.out, exist_ok=True)
    predictions = results.pop("predictions")
    with open(os.path.join(args.out, "predictions.jsonl"), "w") as f:
        for row in predictions:
            f.write(json.dumps(row) + "\n")
    with open(os.path.join(args.out, "results.json.tmp"), "w") as f:
        json.dump(results, f, indent=2)
    os.replace(os.path.join(args.out, "results.json.tmp"), os.path.join(args.out, "results.json"))
    print(
        f"{args.suite}: accuracy {results['accuracy']:.1%} on {results['n']} items, "
        f"format valid {results['format_valid']:.1%}"
    )
    for group, accuracy in results["by_group"].items():
        print(f"  {group}: {accuracy:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
