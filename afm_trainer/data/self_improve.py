r"""Teacher chain-of-thought traces -> the three training sets of seed 004's chain.

    traces --without drafts and reasoning--> convert --> track_a/   question -> answer
           --convert (min_score, balance)------------> track_b/   question + student draft -> reasoning -> answer
                                                     \-> pairs/     question + draft: the teacher's turn over a wrong draft

Writes OUT_DIR/{track_a,track_b,pairs}/{train,val}.parquet; every step's output, rejects
and report sit in OUT_DIR/work/. Track A keeps every record (its target is the recorded
answer, whatever the teacher said); ``min_score`` filters track B and the pairs (the
records whose teacher disagreed with the answer), and ``balance`` then evens track B's
labels. The three report the label balance before and after filtering. A record is on the
same side of the train/validation split in all three (by its id alone), so no validation
question is trained on in another track, and an upsampled copy stays with its original.
"""

from __future__ import annotations

import hashlib
import json
import os

import pyarrow.parquet as pq

from afm_trainer.data.convert import convert
from afm_trainer.data.parquet_io import InputError
from afm_trainer.data.splits import source_id, write_splits


def write_without(source: str, target: str, fields: tuple[str, ...] = ("student_draft", "teacher_output")) -> None:
    """The records of a JSONL file without ``fields`` (track A: no student draft and no
    teacher reasoning; evaluation asks the bare question, so training must too). Lines
    that are not JSON objects are copied unchanged, so the converter rejects them under
    their own line number."""
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    with (
        open(source, encoding="utf-8", errors="surrogateescape") as f,
        open(target + ".tmp", "w", encoding="utf-8", errors="surrogateescape") as g,
    ):
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                for name in fields:
                    record.pop(name, None)
                line = json.dumps(record) + "\n"
            g.write(line)
    os.replace(target + ".tmp", target)


def in_validation(record_id: str, val_ratio: float, seed: int) -> bool:
    """Whether a record is validation data: by a hash of its source's id (``source_id``:
    an upsampled copy and an augmentation stay on their source's side), independent of
    which other records were kept."""
    digest = hashlib.sha256(f"{seed}:{source_id(record_id)}".encode()).hexdigest()
    return int(digest[:8], 16) / 16**8 < val_ratio


def split_file(source: str, folder: str, id_column: str, val_ratio: float, seed: int) -> dict:
    """FOLDER/{train,val}.parquet (and its split.report.json) from one converted file."""
    table = pq.read_table(source)
    train, val = [], []
    for row in table.to_pylist():
        (val if in_validation(row[id_column], val_ratio, seed) else train).append(row)
    counts = {"train_rows": len(train), "val_rows": len(val)}
    report = {"input_file": source, "id_column": id_column, "val_ratio": val_ratio, "seed": seed, **counts}
    write_splits({"train": train, "val": val}, table.schema, folder, inputs=[source], report=report)
    return counts


def write_self_improve_data(
    traces: str,
    out_dir: str,
    *,
    min_score: float | None = None,
    balance: str = "none",
    val_ratio: float = 0.1,
    seed: int = 42,
    tokenizer: str | None = None,
) -> dict:
    """Run every step; returns each step's report (the converter's, with label balances)."""
    if not os.path.isfile(traces):
        raise InputError(f"input file not found: {traces}")
    work = os.path.join(out_dir, "work")
    os.makedirs(work, exist_ok=True)
    path = lambda name: os.path.join(work, name)  # noqa: E731
    write_without(traces, path("track_a.jsonl"))
    report = {
        "convert track_a": convert(
            path("track_a.jsonl"), path("track_a.parquet"), "teacher_cot", tokenizer_path=tokenizer
        ),
        "convert track_b": convert(
            traces,
            path("track_b.parquet"),
            "teacher_cot",
            tokenizer_path=tokenizer,
            min_score=min_score,
            balance=balance,
            seed=seed,
        ),
    }
    sources = {
        "track_a": path("track_a.parquet"),
        "track_b": path("track_b.parquet"),
        "pairs": path("track_b.pairs.parquet"),
    }
    for name, source in sources.items():
        id_column = "pair_id" if name == "pairs" else "trajectory_id"
        report[f"split {name}"] = split_file(source, os.path.join(out_dir, name), id_column, val_ratio, seed)
    return report
