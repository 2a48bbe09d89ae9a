"""The CPU rollout's running batch (`models/decoding.py: RunningBatch`) under a multi-turn
load: generated tokens per second when finished rows leave the cache at once (every
finish copies the whole cache, the rollout's behaviour before) against leaving it once a
quarter of the rows have finished (`COMPACT_SHARE`, the default), alternated in one run.

    python benchmarks/bench_running_batch.py [--model DIR] [--rows 128] [--rounds 2]

The load: --rows prompts of 200-700 random tokens start together, and 8 more of 300-900
tokens join every 8 steps until as many again have joined (an agent's next turns, longer
than its first); every answer is sampled at temperature 1 to a length drawn from 40-300
tokens, so rows finish all through the run. Both policies decode exactly the same tokens
(each request samples from its own seeded stream). The model is the demo's final SFT
model when `make demo` has run, else a fresh tiny model.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch

# sibling benchmarks: python puts this script's folder first on sys.path
from bench_rollout import WORK, default_model

from afm_trainer.models import decoding

JOIN_EVERY, JOINING = 8, 8


def run(model, rows: int, compact_share: float) -> tuple[int, float]:
    """(tokens generated, seconds) for the load above with rows leaving at ``compact_share``."""
    rng = random.Random(0)

    def request(low: int, high: int) -> decoding.Request:
        prompt = [rng.randrange(10, model.config.vocab_size) for _ in range(rng.randint(low, high))]
        generator = torch.Generator().manual_seed(rng.randrange(1 << 30))
        return decoding.Request(prompt, max_tokens=rng.randint(40, 300), temperature=1.0, generator=generator)

    decoding.COMPACT_SHARE, saved = compact_share, decoding.COMPACT_SHARE
    try:
        batch, tokens, joined = decoding.RunningBatch(model), 0, 0
        start = time.perf_counter()
        batch.admit([request(200, 700) for _ in range(rows)])
        while batch.live:
            tokens += sum(len(out["token_ids"]) for _, out in batch.run(JOIN_EVERY))
            if batch.steps % JOIN_EVERY == 0 and joined < rows:
                batch.admit([request(300, 900) for _ in range(JOINING)])
                joined += JOINING
        return tokens, time.perf_counter() - start
    finally:
        decoding.COMPACT_SHARE = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.makedirs(WORK, exist_ok=True)
    path = args.model or default_model(WORK)
    model = decoding.load_decoding_model(path, torch.float32)
    policies = {
        "finished rows leave at once": 1e-9,
        f"once {decoding.COMPACT_SHARE:.0%} have finished": decoding.COMPACT_SHARE,
    }
    speeds = {name: [] for name in policies}
    for round_ in range(1, args.rounds + 1):
        for name, share in policies.items():
            tokens, seconds = run(model, args.rows, share)
            speeds[name].append(tokens / seconds)
            print(
                f"round {round_}, {name}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:,.0f} tok/s",
                flush=True,
            )
    (slow, fast) = (statistics.median(v) for v in speeds.values())
    print(f"\n| running batch, {args.rows} rows + joins ({path}) | tokens/s (median of {args.rounds}) |")
    print("|---|---|")
    for name, values in speeds.items():
        print(f"| {name} | {statistics.median(values):,.0f} |")
    print(f"\nratio: {fast / slow:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
