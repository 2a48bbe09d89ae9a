"""Train/validation splits by trajectory, optionally in shards.

Every sample of a trajectory lands on the same side (splitting per step would leak steps
of one trajectory into validation), and so does every copy made of it: an upsampled copy
(``ID#copyN``, convert_traces.py --balance upsample) and an augmentation (``ID#augN``,
afm_trainer/world/augment.py) go with their source (``source_id``). Sources are
stratified by label when the answers are categorical. The choice depends only on
(source id, label, seed), so the three datasets of one pipeline run get the same
validation trajectories.

A split is one output set (``afm_trainer.data.parquet_io.OutputSet``): an earlier split's
files in the folder (``train.parquet``, ``train-0000K-of-0000N.parquet``, val likewise),
whatever its shard count, are replaced whole, and ``split.report.json``, written last,
names each file's sha256 and row count.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from afm_trainer.data.convert import is_categorical, label_of
from afm_trainer.data.parquet_io import InputError, OutputSet, check_output_dir, read_table, write_rows

REPORT = "split.report.json"
SPLITS = ("train", "val")
_COPY_SUFFIX = re.compile(r"(#(copy|aug)\d+)+$")


def source_id(record_id: str) -> str:
    """The id of the record a copy was made from: ``ID#copyN`` (an upsampled copy),
    ``ID#augN`` (an augmentation) and ``ID#augN#copyM`` are all ``ID``."""
    return _COPY_SUFFIX.sub("", record_id)


def _rank(seed: int, trajectory_id: str) -> str:
    return hashlib.sha256(f"{seed}:{trajectory_id}".encode()).hexdigest()


def split_by_trajectory(rows: list[dict], val_ratio: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val): whole sources (a trajectory with its copies), about val_ratio of them
    in val per label stratum (a source's label: its own trajectory's, the first by id)."""
    label: dict[str, str | None] = {}
    for trajectory_id, answer in sorted({r["trajectory_id"]: r.get("answer") for r in rows}.items()):
        label.setdefault(source_id(trajectory_id), label_of(answer))
    stratify = is_categorical(Counter(label.values()))
    strata: dict[str | None, list[str]] = {}
    for source, source_label in label.items():
        strata.setdefault(source_label if stratify else None, []).append(source)
    val_sources = set()
    for sources in strata.values():
        ordered = sorted(sources, key=lambda t: _rank(seed, t))
        count = round(len(ordered) * val_ratio)
        if val_ratio > 0 and count == 0 and len(ordered) > 1:
            count = 1
        val_sources.update(ordered[:count])
    train = [r for r in rows if source_id(r["trajectory_id"]) not in val_sources]
    val = [r for r in rows if source_id(r["trajectory_id"]) in val_sources]
    return train, val


def shard_names(name: str, shards: int) -> list[str]:
    return [f"{name}.parquet"] if shards <= 1 else [f"{name}-{k:05d}-of-{shards:05d}.parquet" for k in range(shards)]


def split_file_names(folder: str) -> list[str]:
    """The files of the splits already in ``folder``: ``train.parquet`` or its shards, val likewise."""
    pattern = re.compile(rf"({'|'.join(SPLITS)})(-\d{{5}}-of-\d{{5}})?\.parquet")
    return (
        sorted(os.path.join(folder, n) for n in os.listdir(folder) if pattern.fullmatch(n))
        if os.path.isdir(folder)
        else []
    )


def _parts(rows: list[dict], name: str, shards: int) -> list[tuple[str, list[dict]]]:
    """(file name, rows) of a split written as NAME.parquet or as shards: consecutive runs
    of rows, so the shards read in order are the rows in order (a run on them equals a run
    on one file). A split gets at most one shard per row: no shard is empty."""
    names = shard_names(name, max(1, min(shards, len(rows))))
    return [(n, rows[len(rows) * k // len(names) : len(rows) * (k + 1) // len(names)]) for k, n in enumerate(names)]


def write_split(rows: list[dict], schema, out_dir: str, name: str, shards: int = 1) -> list[str]:
    """One split alone as OUT_DIR/NAME.parquet or its shards (no report; nothing else
    replaced); returns their paths."""
    paths = []
    for filename, part in _parts(rows, name, shards):
        paths.append(os.path.join(out_dir, filename))
        write_rows(part, schema, paths[-1])
    return paths


def write_splits(
    splits: dict[str, list[dict]], schema, out_dir: str, shards: int = 1, inputs=(), report=None, optional=()
) -> dict:
    """Write each split (``{"train": rows, "val": rows}``) as OUT_DIR/NAME.parquet or as
    shards, replacing every split file an earlier run left there, with
    OUT_DIR/split.report.json last (``report`` and each file's sha256 and rows).
    ``optional``: files of the set the caller may have written beside the splits, at
    their temporary path (``PATH.tmp``); one not written this time is removed."""
    check_output_dir(out_dir)
    parts = [
        (os.path.join(out_dir, n), part) for name, rows in splits.items() for n, part in _parts(rows, name, shards)
    ]
    written = [path for path in optional if os.path.exists(OutputSet.tmp(path))]
    outputs = OutputSet(
        os.path.join(out_dir, REPORT),
        [path for path, _ in parts] + written,
        inputs=inputs,
        stale=split_file_names(out_dir) + [path for path in optional if path not in written],
    )
    with outputs:
        for path, part in parts:
            pq.write_table(pa.Table.from_pylist(part, schema=schema), outputs.tmp(path))
        return outputs.commit(report or {})


def prepare_train_val(
    input_file: str, output_dir: str, val_ratio: float = 0.1, seed: int = 42, shards: int = 1
) -> dict:
    """OUTPUT_DIR/{train,val}.parquet (or their shards) from a converted parquet."""
    if shards < 1:
        raise InputError(f"--shards must be 1 or more, got {shards}")
    table = read_table(input_file, "trajectory_id", "convert it with convert_traces.py")
    check_output_dir(output_dir)
    train, val = split_by_trajectory(table.to_pylist(), val_ratio, seed)
    counts = {
        "train_samples": len(train),
        "train_trajectories": len({r["trajectory_id"] for r in train}),
        "val_samples": len(val),
        "val_trajectories": len({r["trajectory_id"] for r in val}),
    }
    report = {"input_file": input_file, "val_ratio": val_ratio, "seed": seed, "shards": shards, **counts}
    write_splits({"train": train, "val": val}, table.schema, output_dir, shards, inputs=[input_file], report=report)
    return counts
