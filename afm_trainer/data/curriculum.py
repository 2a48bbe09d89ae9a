"""Curriculum ordering: training rows easy first, in stages, as a train sampler.

    data.curriculum.key=difficulty data.curriculum.stages=3      (any SFT-engine recipe)

Every epoch, the rows are sorted by the key (a numeric column of the training parquet,
e.g. ``difficulty`` or ``score`` written by the converter, or ``length``: the row's
tokens as the dataset builds it) and cut into ``stages`` groups of equal size; the
groups go easiest first, each shuffled within itself (seeded by seed and epoch), so
every key of a stage is <= every key of the next. Global batch ``t`` is rows
``t*B .. (t+1)*B`` of that order on every rank count (rank ``r`` takes every
``R``-th row, as torch's DistributedSampler does). The rows that do not fill a last
global batch are drawn at random each epoch, not always the hardest.

The order is a function of (rows, key, stages, seed, epoch, batch size), so a resumed
run continues at the same place: the data loader's state holds how far into the
epoch it got, and the order it skips through is the one it was trained on.
``write_order`` writes that order for a run, one line per global step, in
``OUT_DIR/data_order.jsonl``: which rows each step trains, with their keys.

Preference pairs (DPO, ``afm_trainer.data.pair_dataset``): a row is a pair; its columns
are the pair file's (``weight``, or any other numeric column the file holds), and its
``length`` is the longer of its two conversations, prompt + chosen and prompt + rejected,
in tokens: the longest sequence the pair puts through the model, so a stage of short pairs
holds no long answer on either side.
"""

from __future__ import annotations

import json
import os
import random

from torch.utils.data import DistributedSampler

LENGTH = "length"


def _tokens(item: dict) -> float:
    mask = item.get("attention_mask")
    return float(mask.sum()) if mask is not None else float(len(item["input_ids"]))


def curriculum_keys(dataset, key: str) -> list[float]:
    """Each row's key: a numeric column of the dataset's parquet, or ``length``. A
    dataset whose ``dataframe`` rows are not its items (a pair dataset's holds two
    conversations per pair) gives its items' table as ``curriculum_frame``."""
    if key == LENGTH:
        keys = []
        for index in range(len(dataset)):
            item = dataset[index]
            if "chosen" in item and "rejected" in item:  # a preference pair: its longer conversation
                keys.append(max(_tokens(item["chosen"]), _tokens(item["rejected"])))
            else:
                keys.append(_tokens(item))
        return keys
    frame = getattr(dataset, "curriculum_frame", None)
    if frame is None:
        frame = getattr(dataset, "dataframe", None)
    if frame is None or key not in frame.columns:
        columns = ", ".join(map(str, frame.columns)) if frame is not None else "none"
        raise ValueError(
            f"data.curriculum.key={key!r}: no such column in the training data (columns: {columns}; or {LENGTH!r})"
        )
    keys = []
    for row, value in enumerate(frame[key].tolist()):
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise ValueError(f"data.curriculum.key={key!r}: training row {row} has {value!r}, not a number")
        keys.append(float(value))
    return keys


class CurriculumSampler(DistributedSampler):
    def __init__(self, dataset, keys: list[float], stages: int, batch_size: int, num_replicas: int, rank: int, seed=0):
        if stages < 1:
            raise ValueError(f"data.curriculum.stages must be 1 or more, got {stages}")
        if len(keys) != len(dataset):
            raise ValueError(f"{len(keys)} curriculum keys for {len(dataset)} rows")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed, drop_last=True)
        self.keys, self.stages, self.batch_size = keys, stages, batch_size
        self.total_size = len(keys) // batch_size * batch_size  # whole global batches only
        self.num_samples = self.total_size // num_replicas
        if not self.total_size:
            raise ValueError(f"{len(keys)} training rows do not fill one global batch of {batch_size}")

    def order(self, epoch: int) -> list[int]:
        """The epoch's rows in training order (all ranks together)."""
        rng = random.Random(f"{self.seed}:{epoch}")
        rows = rng.sample(range(len(self.keys)), self.total_size)  # the epoch's whole batches
        rows.sort(key=lambda i: (self.keys[i], i))
        ordered = []
        for stage in range(self.stages):
            group = rows[len(rows) * stage // self.stages : len(rows) * (stage + 1) // self.stages]
            rng.shuffle(group)
            ordered += group
        return ordered

    def __iter__(self):
        return iter(self.order(self.epoch)[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


def write_order(sampler: CurriculumSampler, steps: int, path: str, key: str) -> None:
    """The run's training order for its ``steps`` global steps, one line per step (atomic write)."""
    with open(path + ".tmp", "w") as f:
        step, epoch = 0, 0
        while step < steps:
            order = sampler.order(epoch)
            for start in range(0, len(order), sampler.batch_size):
                if step == steps:
                    break
                step += 1
                rows = order[start : start + sampler.batch_size]
                line = {"step": step, "epoch": epoch, "rows": rows, key: [sampler.keys[i] for i in rows]}
                f.write(json.dumps(line) + "\n")
            epoch += 1
    os.replace(path + ".tmp", path)
