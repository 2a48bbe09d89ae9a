"""Training metrics as verl's file logger writes them (``OUT_DIR/metrics.jsonl``).

verl's file logger truncates its file when a run starts, so the recipe moves an earlier
run's file aside first (``metrics.1.jsonl``, ``metrics.2.jsonl``, ...); reading them in
order, later lines win, which is also what a resumed run means for a repeated step.
"""

from __future__ import annotations

import json
import os
import re

METRICS_FILE = "metrics.jsonl"


def _rotated(out_dir: str) -> list[str]:
    numbered = []
    for name in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        if m := re.fullmatch(r"metrics\.(\d+)\.jsonl", name):
            numbered.append((int(m.group(1)), name))
    return [os.path.join(out_dir, name) for _, name in sorted(numbered)]


def rotate_metrics(out_dir: str) -> str:
    """Move an existing metrics.jsonl aside (next free number); return the path to log to."""
    path = os.path.join(out_dir, METRICS_FILE)
    if os.path.exists(path):
        os.replace(path, os.path.join(out_dir, f"metrics.{len(_rotated(out_dir)) + 1}.jsonl"))
    return path


def read_records(path: str):
    """The JSON lines of a file a run appends to (metrics, validation dumps, the rollout's
    trace); a line cut short by a killed run is skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def read_metrics(out_dir: str) -> dict[int, dict[str, float]]:
    """{step: {metric: value}} over every run logged in ``out_dir``, later runs winning."""
    steps: dict[int, dict[str, float]] = {}
    for path in _rotated(out_dir) + [os.path.join(out_dir, METRICS_FILE)]:
        if os.path.exists(path):
            for record in read_records(path):
                steps.setdefault(int(record["step"]), {}).update(record["data"])
    return dict(sorted(steps.items()))
