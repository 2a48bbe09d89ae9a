"""Seed 001's claim, measured: one model for the whole agent chain vs the multi-agent system.

    python benchmarks/bench_afm_vs_mas.py [--out out/demo-afm] [--latency_items 110] [--config afm.yaml]

Needs `make demo-afm` first (its OUT_DIR holds the AFM, the three role models and the
world's held-out tasks). On the same held-out algorithmic tasks, in one run, each system
is served in a fresh Python process of its own, one after the other (never both at
once): the multi-agent system (Planner, Coder and Reviewer models, a controller that
sends the Coder back when the Reviewer rejects) and the AFM (one model, one call a task).
For each: held-out accuracy (the chain's last program run in the sandbox on the task's
input), model calls, prompt and generated tokens per task, latency per task served one
at a time (median, p95), throughput with the tasks batched, the weights in memory and the
process's peak resident memory. The seed's anchors: 3 calls -> 1, "3x faster", "66%
cheaper". Prints both and the AFM's ratio to the multi-agent system.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

ROWS = [
    ("held-out accuracy", "accuracy"),
    ("model calls per task", "calls_per_task"),
    ("prompt tokens per task", "prompt_tokens_per_task"),
    ("generated tokens per task", "generated_tokens_per_task"),
    ("latency per task, median (s)", "latency_median_s"),
    ("latency per task, p95 (s)", "latency_p95_s"),
    ("throughput, batched (tasks/s)", "tasks_per_second"),
    ("models served", "models"),
    ("weights in memory (MB)", "weights_mb"),
    ("peak resident memory (MB)", "peak_rss_mb"),
]


def child(system: str, out: str, config: str | None, latency_items: int | None) -> int:
    """Serve one system and print its figures as one JSON line (the parent reads it)."""
    from afm_trainer.checkpoints import latest_export
    from afm_trainer.demo import load_settings
    from afm_trainer.demo.afm import ROLE_STAGES, embedded_paths, heldout_items, serve

    settings = load_settings("afm", config)
    if latency_items is not None:
        settings["evaluation"]["latency_items"] = latency_items
    models = {}
    for folder in ("afm", *ROLE_STAGES.values()):
        models[folder], exists = latest_export(os.path.join(out, folder))
        if not exists:
            print(
                f"error: no trained model in {os.path.join(out, folder)} (run `make demo-afm` first)", file=sys.stderr
            )
            return 2
    result = serve(system, models, heldout_items(embedded_paths(out)), settings)
    result.pop("rows")
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/demo-afm", help="the OUT_DIR of make demo-afm")
    parser.add_argument("--config", default=None, help="the demo's settings file, if not the shipped one")
    parser.add_argument("--latency_items", type=int, default=None, help="tasks served one at a time (default: all)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.out, args.config, args.latency_items)
    results = {}
    for system in ("multi-agent system", "AFM"):
        command = [sys.executable, __file__, "--out", args.out, "--child", system]
        if args.config:
            command += ["--config", args.config]
        command += ["--latency_items", str(args.latency_items if args.latency_items is not None else 10**6)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"{system} failed", file=sys.stderr)
            return done.returncode
        line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
        results[system] = json.loads(line[len("RESULT ") :])
    mas, afm = results["multi-agent system"], results["AFM"]
    print(f"{'':32s} {'multi-agent':>12s} {'AFM':>12s} {'AFM/MAS':>9s}")
    for label, key in ROWS:
        a, b = mas.get(key), afm.get(key)
        ratio = f"{b / a:.2f}x" if a else ""
        print(f"{label:32s} {a!s:>12s} {b!s:>12s} {ratio:>9s}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
