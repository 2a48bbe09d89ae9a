"""Train/validation splits by trajectory, optionally in shards.

Every sample of a trajectory lands on the same side (splitting per step would leak steps
of one trajectory into validation), and trajectories are stratified by label when the
answers are categorical. The choice depends only on (trajectory_id, label, seed), so the
three datasets of one pipeline run get the same validation trajectories.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter

from afm_trainer.data.convert import is_categorical, label_of
from afm_trainer.data.parquet_io import InputError, check_output_dir, read_table, write_rows


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


def shard_names(name: str, shards: int) -> list[str]:
    return [f"{name}.parquet"] if shards <= 1 else [f"{name}-{k:05d}-of-{shards:05d}.parquet" for k in range(shards)]


def write_split(rows: list[dict], schema, out_dir: str, name: str, shards: int = 1) -> list[str]:
    """Write rows as OUT_DIR/NAME.parquet or as shards: consecutive runs of rows, so the
    shards read in order are the rows in order (a run on them equals a run on one file).
    A split gets at most one shard per row: no shard is empty."""
    names = shard_names(name, max(1, min(shards, len(rows))))
    paths = []
    for k, filename in enumerate(names):
        part = rows[len(rows) * k // len(names) : len(rows) * (k + 1) // len(names)]
        paths.append(os.path.join(out_dir, filename))
        write_rows(part, schema, paths[-1])
    return paths


def prepare_train_val(
    input_file: str, output_dir: str, val_ratio: float = 0.1, seed: int = 42, shards: int = 1
) -> dict:
    """OUTPUT_DIR/{train,val}.parquet (or their shards) from a converted parquet."""
    if shards < 1:
        raise InputError(f"--shards must be 1 or more, got {shards}")
    table = read_table(input_file, "trajectory_id", "convert it with convert_traces.py")
    check_output_dir(output_dir)
    train, val = split_by_trajectory(table.to_pylist(), val_ratio, seed)
    write_split(train, table.schema, output_dir, "train", shards)
    write_split(val, table.schema, output_dir, "val", shards)
    return {
        "train_samples": len(train),
        "train_trajectories": len({r["trajectory_id"] for r in train}),
        "val_samples": len(val),
        "val_trajectories": len({r["trajectory_id"] for r in val}),
    }
