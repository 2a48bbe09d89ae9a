r"""Augmenting agent chains of the demo world: the same task with other parameters,
solved again by the scripted teacher (seed 001's "data augmentation").

    python data_preprocess/augment_chains.py --input_file chains.jsonl --output_file more.jsonl \
        --copies 1 [--exclude heldout/algorithmic.jsonl] [--seed 0]

For every chain that names its task (``type``, ``difficulty``, as the world writes
them), ``copies`` new tasks of that type and difficulty with other inputs, each with the
chain the teacher writes for it (Planner, Coder, Reviewer, the verdict decided in the
sandbox; a source whose Coder was sent back gets copies whose Coder is too). The output
holds every input record unchanged, then the new ones; a new record's id is
``SOURCE#augN`` and it carries ``augmented_from`` (the source's id) and
``augmentation``, so each is traceable to its source, and the train/validation split
keeps it on its source's side. A task whose prompt is in ``--exclude`` (the held-out
set) or equals its source's is never made. Records that cannot be augmented (no task
type or difficulty, an unknown type, no id) are listed with the reason in
``OUT.not_augmented.jsonl``; they are still in the output, unchanged (a line that is not
JSON is listed there only).
"""

from __future__ import annotations

import json
import os
import random
import zlib
from collections import Counter

from afm_trainer.data.convert import read_records
from afm_trainer.data.parquet_io import (
    InputError,
    check_output_file,
    reject_line,
    remove_quietly,
    unreadable_reason,
)
from afm_trainer.world.algorithmic import TYPES, make_task
from afm_trainer.world.teacher import agent_chain_record

KIND = "perturbed_parameters"
ATTEMPTS = 20  # inputs tried per copy before giving up (small cells have few distinct inputs)


def held_out_prompts(path: str | None) -> set[str]:
    if not path:
        return set()
    if not os.path.isfile(path):
        raise InputError(f"--exclude file not found: {path}")
    prompts = set()
    for location, record in read_records(path):
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise InputError(f"--exclude {path}, {location}: not a task with a 'prompt'")
        prompts.add(record["prompt"])
    return prompts


def why_not_augmentable(record) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("id") is None:
        return "no 'id' (a generated record names its source)"
    if record.get("type") not in TYPES:
        return f"task type {record.get('type')!r} is not one of the world's"
    if not isinstance(record.get("difficulty"), int) or isinstance(record.get("difficulty"), bool):
        return f"difficulty {record.get('difficulty')!r} is not an integer"
    return None


def perturbed_chains(record: dict, copies: int, seed: int, exclude: set[str]) -> list[dict]:
    """Up to ``copies`` chains of new inputs of the record's task type and difficulty."""
    source = str(record["id"])
    task_seed = zlib.crc32(f"{seed}:{source}".encode())  # the same records on every run
    rng = random.Random(task_seed)
    seen = exclude | {record.get("task")}
    coder_turns = sum(isinstance(t, dict) and t.get("agent") == "Coder" for t in record.get("trajectory") or [])
    retry = 1.0 if coder_turns > 1 else 0.0  # a chain with a rewrite gets copies with one
    made = []
    for index in range(copies * ATTEMPTS):
        if len(made) == copies:
            break
        task = make_task(task_seed, record["type"], record["difficulty"], index)
        if task.prompt in seen:
            continue
        seen.add(task.prompt)
        chain = agent_chain_record(task, rng, retry=retry)
        made.append({**chain, "id": f"{source}#aug{len(made) + 1}", "augmented_from": source, "augmentation": KIND})
    return made


def augment_chains(
    input_file: str, output_file: str, copies: int = 1, seed: int = 0, exclude: str | None = None
) -> dict:
    """Write the input records and their augmentations; returns the counts."""
    if copies < 1:
        raise InputError(f"--copies must be 1 or more, got {copies}")
    check_output_file(output_file)
    held_out = held_out_prompts(exclude)
    skipped_path = output_file + ".not_augmented.jsonl"
    reasons: Counter = Counter()
    records_in = generated = short = 0
    try:
        with open(output_file + ".tmp", "w") as out, open(skipped_path + ".tmp", "w") as skipped:
            new = []
            for location, record in read_records(input_file):
                records_in += 1
                reason = f"{record} (not copied)" if isinstance(record, Exception) else None
                if reason is None:
                    try:
                        line = json.dumps(record) + "\n"  # every input record, unchanged
                        reason = why_not_augmentable(record)
                    except (RecursionError, ValueError) as exc:  # nested too deep, a huge integer
                        reason = f"{unreadable_reason(exc) or exc} (not copied)"
                    else:
                        out.write(line)
                if reason:
                    reasons[reason] += 1
                    skipped.write(reject_line(location, reason, record))
                    continue
                chains = perturbed_chains(record, copies, seed, held_out)
                short += copies - len(chains)
                new += chains
            for chain in new:
                out.write(json.dumps(chain) + "\n")
            generated = len(new)
    except BaseException:
        remove_quietly(output_file + ".tmp", skipped_path + ".tmp")
        raise
    os.replace(output_file + ".tmp", output_file)
    os.replace(skipped_path + ".tmp", skipped_path)
    return {
        "records_in": records_in,
        "generated": generated,
        "not_augmented": sum(reasons.values()),
        "not_augmented_by_reason": dict(reasons.most_common()),
        "copies_without_a_new_input": short,
        "excluded_prompts": len(held_out),
    }
