r"""Agent chains (Planner -> Coder -> Reviewer) -> the training sets of seed 001's comparison.

    chains --convert one_call (min_score)--------> afm/        the whole chain as one turn: one model plays every role
           --convert multiturn, --role planner --> planner/    one model per role: its own turns trained,
           --convert multiturn, --role coder ----> coder/      the turns before them as context
           --convert multiturn, --role reviewer -> reviewer/

Writes OUT_DIR/{afm,planner,coder,reviewer}/{train,val}.parquet; every conversion's
output, rejects and report sit in OUT_DIR/work/. A chain is on the same side of the
train/validation split in all four (by its id), so the multi-agent system and the AFM
learn from the same chains.
"""

from __future__ import annotations

import os

from afm_trainer.data.convert import convert
from afm_trainer.data.parquet_io import InputError
from afm_trainer.data.self_improve import split_file
from afm_trainer.models.special_tokens import ROLE_TOKENS

ROLE_SETS = {token[2:-2]: token for token in ROLE_TOKENS}  # planner -> <|planner|>
SETS = ("afm", *ROLE_SETS)


def write_chain_data(
    chains: str,
    out_dir: str,
    *,
    min_score: float | None = None,
    val_ratio: float = 0.1,
    seed: int = 42,
    tokenizer: str | None = None,
) -> dict:
    """Convert the chains four ways and split each; returns every step's report."""
    if not os.path.isfile(chains):
        raise InputError(f"input file not found: {chains}")
    work = os.path.join(out_dir, "work")
    os.makedirs(work, exist_ok=True)
    report = {}
    for name in SETS:
        role = ROLE_SETS.get(name)
        converted = os.path.join(work, f"{name}.parquet")
        mode = "multiturn" if role else "one_call"
        report[f"convert {name}"] = convert(
            chains, converted, "agent_chain", mode, tokenizer_path=tokenizer, min_score=min_score, role=role
        )
        report[f"split {name}"] = split_file(converted, os.path.join(out_dir, name), "trajectory_id", val_ratio, seed)
    return report
