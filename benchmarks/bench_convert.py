"""Stepwise conversion speed and memory: afm-trainer's streaming converter vs a plain
read-all-then-loop converter of the same traces, in one run.

The peer is not a published tool: it is the converter a user would write in a few
lines (below, PLAIN), written for this benchmark; it builds the same samples.

    python benchmarks/bench_convert.py [--sizes 10000 100000]

Traces are shaped like seed 002's: 1-4 search rounds, 3 documents of ~120 words each.
Each conversion runs in a fresh process; its peak resident memory is that process's
own maximum. Targets of the data issue: >= 2x the plain converter's traces/s, and
peak memory under 400 MB at 100k traces, flat as input grows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(REPO, ".bench", "convert")
VOCAB = (
    "river city mayor founded library bridge northern council archive museum painter born married "
    "treaty harbour merchant guild festival province capital elected century island"
).split()


def make_traces(path: str, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = lambda k: " ".join(rng.choice(VOCAB) for _ in range(k))  # noqa: E731
    with open(path, "w") as f:
        for i in range(n):
            trace = []
            for _ in range(rng.randint(1, 4)):
                trace.append({"type": "reasoning", "content": words(25)})
                trace.append({"type": "search", "query": words(5)})
                docs = [{"title": words(3), "content": words(120)} for _ in range(3)]
                trace.append({"type": "search_result", "documents": docs})
            trace += [{"type": "reasoning", "content": words(20)}, {"type": "CorrectAnswer", "content": words(2)}]
            f.write(json.dumps({"id": f"q{i}", "question": words(12) + "?", "trace": trace}) + "\n")


# The peer: what a plain script does - read everything, loop, build every sample, write once.
PLAIN = r"""
import json, sys, pandas as pd
records = [json.loads(line) for line in open(sys.argv[1])]
rows = []
for r in records:
    messages = [{"role": "user", "content": r["question"]}]
    pending = []
    for step in r["trace"]:
        if step["type"] == "reasoning":
            pending.append("<think>" + step["content"] + "</think>")
        elif step["type"] == "search":
            pending.append("<search>" + step["query"] + "</search>")
            messages.append({"role": "assistant", "content": "\n".join(pending)}); pending = []
            rows.append({"messages": list(messages), "trajectory_id": r["id"]})
        elif step["type"] == "search_result":
            docs = "\n".join(f"[{i}] {d['title']}: {d['content']}" for i, d in enumerate(step["documents"], 1))
            messages.append({"role": "tool", "content": "<information>" + docs + "</information>"})
        elif step["type"] == "CorrectAnswer":
            pending.append("<answer>" + step["content"] + "</answer>")
            messages.append({"role": "assistant", "content": "\n".join(pending)})
            rows.append({"messages": list(messages), "trajectory_id": r["id"]})
pd.DataFrame(rows).to_parquet(sys.argv[2])
"""


def run_measured(argv: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a command run in a fresh process."""
    wrapper = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter(); code = subprocess.call(sys.argv[1:]); dt = time.perf_counter() - t\n"
        "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{result.stderr[-2000:]}")
    seconds, peak = result.stdout.strip().splitlines()[-1].split()
    return float(seconds), float(peak)


def convert_ours(traces: str, out: str) -> tuple[float, float]:
    """(seconds, peak MB) of data_preprocess/convert_traces.py, stepwise, in a fresh process."""
    script = os.path.join(REPO, "data_preprocess", "convert_traces.py")
    args = ["--format", "search_agent", "--mode", "stepwise", "--input_file", traces, "--output_file", out]
    return run_measured([sys.executable, script, *args])


def convert_plain(traces: str, out: str) -> tuple[float, float]:
    """(seconds, peak MB) of the read-all converter (PLAIN), in a fresh process."""
    os.makedirs(WORK, exist_ok=True)
    script = os.path.join(WORK, "plain_convert.py")
    with open(script, "w") as f:
        f.write(PLAIN)
    return run_measured([sys.executable, script, traces, out])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    os.makedirs(WORK, exist_ok=True)
    print("| traces | converter | seconds | traces/s | peak MB |\n|---|---|---|---|---|")
    summary = []
    for n in args.sizes:
        traces = os.path.join(WORK, f"traces_{n}.jsonl")
        if not os.path.exists(traces):
            make_traces(traces, n)
        t_ours, m_ours = convert_ours(traces, os.path.join(WORK, f"ours_{n}.parquet"))
        t_plain, m_plain = convert_plain(traces, os.path.join(WORK, f"plain_{n}.parquet"))
        print(f"| {n:,} | afm-trainer | {t_ours:.1f} | {n / t_ours:,.0f} | {m_ours:.0f} |")
        print(
            f"| {n:,} | read-all converter (written for this benchmark) | {t_plain:.1f} | {n / t_plain:,.0f} | {m_plain:.0f} |"
        )
        summary.append((n, t_plain / t_ours, m_ours))
    for n, speedup, memory in summary:
        print(
            f"{n:,} traces: afm-trainer {speedup:.2f}x the read-all converter's speed (target >= 2x), "
            f"peak {memory:.0f} MB (target < 400 MB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
