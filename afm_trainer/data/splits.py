"""Summary datasets (seed 002) and train/validation splits by trajectory.

- ``summary_prefix``: full context -> "<summary>...</summary>" + the original target turn;
- ``summary_only``: the summary alone as the user turn -> the original target turn;
- ``split_by_trajectory``: every sample of a trajectory lands on the same side (the peer
  pipeline split per step, so steps of one trajectory leaked into validation), and
  trajectories are stratified by label when the answers are categorical. The choice
  depends only on (trajectory_id, label, seed), so the three datasets of one pipeline run
  get the same validation trajectories.
"""

from __future__ import annotations

import hashlib
from collections import Counter

from afm_trainer.data.convert import is_categorical, label_of


def summary_prefix(row: dict) -> dict:
    *context, target = row["messages"]
    content = f"<summary>{row['summary']}</summary>\n{target['content']}"
    return {**row, "messages": [{**m, "train": False} for m in context] + [{**target, "content": content, "train": True}]}


def summary_only(row: dict) -> dict:
    target = row["messages"][-1]
    return {**row, "messages": [{"role": "user", "content": row["summary"], "train": False}, {**target, "train": True}]}


def _rank(seed: int, trajectory_id: str) -> str:
    return hashlib.sha256(f"{seed}:{trajectory_id}".encode()).hexdigest()


def split_by_trajectory(rows: list[dict], val_ratio: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val): whole trajectories, about val_ratio of them in val per label stratum."""
    label = {r["trajectory_id"]: label_of(r.get("answer")) for r in rows}
    stratify = is_categorical(Counter(label.values()))
    strata: dict[str | None, list[str]] = {}
    for trajectory_id, trajectory_label in label.items():
        strata.setdefault(trajectory_label if stratify else None, []).append(trajectory_id)
    val_ids = set()
    for ids in strata.values():
        ordered = sorted(ids, key=lambda t: _rank(seed, t))
        count = round(len(ordered) * val_ratio)
        if val_ratio > 0 and count == 0 and len(ordered) > 1:
            count = 1
        val_ids.update(ordered[:count])
    train = [r for r in rows if r["trajectory_id"] not in val_ids]
    val = [r for r in rows if r["trajectory_id"] in val_ids]
    return train, val
