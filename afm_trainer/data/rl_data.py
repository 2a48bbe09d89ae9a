"""Prompts with rule rewards for verl's RL trainer, from registered task suites.

Writes OUT/train.parquet and OUT/val.parquet (with OUT/split.report.json, written last:
``afm_trainer.data.splits.write_splits``) in verl's RL format: ``data_source``,
``prompt`` (chat messages), ``ability``, ``reward_model`` ({"style": "rule",
"ground_truth"}: text; a qa row with several gold answers holds the JSON list of them,
afm_trainer.suites.qa), ``extra_info`` (index, split, id, type, difficulty, and ``x`` and
``tests`` as JSON text, since parquet holds values of mixed types badly) and
``agent_name`` (verl's agent loop: ``afm_tag_agent`` for suites whose agent searches,
``single_turn_agent`` otherwise). afm_trainer/verl_ext/rewards.py scores them through
the same suites. Training rows are interleaved by task type (and suite): any run of
consecutive rows covers the kinds evenly.
"""

from __future__ import annotations

import itertools
import os

import pyarrow as pa

from afm_trainer.data.parquet_io import check_output_dir, refuse_overwriting_inputs, remove_quietly
from afm_trainer.data.splits import REPORT, SPLITS, write_splits
from afm_trainer.suites import RLDataRequest, get_suite

CHAT = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
EXTRA_INFO = pa.struct(
    [
        ("index", pa.int64()),
        ("split", pa.string()),
        ("id", pa.string()),
        ("type", pa.string()),
        ("difficulty", pa.int64()),
        ("x", pa.string()),
        ("tests", pa.string()),
    ]
)
SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", CHAT),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", EXTRA_INFO),
        ("agent_name", pa.string()),
    ]
)


def interleave_kinds(rows: list[dict]) -> list[dict]:
    """Round-robin over (data source, type), each kind keeping its shuffled order: every
    run of consecutive rows covers the kinds evenly. With the trainer's shuffling off, a
    step's batch is such a run, and the reward moves with what the model learns rather
    than with which kinds of task a batch happened to draw."""
    kinds: dict[tuple, list[dict]] = {}
    for row in rows:
        kinds.setdefault((row["data_source"], row["extra_info"]["type"]), []).append(row)
    return [row for layer in itertools.zip_longest(*kinds.values()) for row in layer if row is not None]


def make_rl_data(suite_names: list[str], request: RLDataRequest) -> dict:
    """Write the rows of every named suite; returns {split: {data_source: rows}}."""
    check_output_dir(request.out)
    written = [*(f"{split}.parquet" for split in SPLITS), "rejects.jsonl", REPORT]  # rejects: the qa suite's
    refuse_overwriting_inputs([request.qa_file], [os.path.join(request.out, name) for name in written])
    rejects = os.path.join(request.out, "rejects.jsonl")  # the qa suite's, written to rejects.jsonl.tmp
    remove_quietly(rejects + ".tmp")
    splits = {"train": [], "val": []}
    try:
        for name in suite_names:
            train, val = get_suite(name).rl_rows(request)
            splits["train"] += train
            splits["val"] += val
    except BaseException:
        if os.path.exists(rejects + ".tmp"):  # nothing converted: what was wrong with each, to read
            os.replace(rejects + ".tmp", rejects)
        raise
    splits["train"] = interleave_kinds(splits["train"])
    prompts = {split: {r["prompt"][0]["content"] for r in rows} for split, rows in splits.items()}
    if prompts["train"] & prompts["val"]:  # the suites exclude held-out prompts; this guards that
        raise AssertionError(f"{len(prompts['train'] & prompts['val'])} prompts are in train and val both")
    counts = {}
    for split, rows in splits.items():
        for index, row in enumerate(rows):
            row["extra_info"].update(index=index, split=split)
        sources = sorted({r["data_source"] for r in rows})
        counts[split] = {source: sum(r["data_source"] == source for r in rows) for source in sources}
    report = {"suites": suite_names, "world": request.world, "qa_file": request.qa_file, "rows": counts}
    write_splits(splits, SCHEMA, request.out, inputs=[request.qa_file], report=report, optional=[rejects])
    return counts
