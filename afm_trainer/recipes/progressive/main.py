"""The progressive three-phase SFT recipe of seed 002, resumable and checkable.

    bash recipes/train_progressive.sh NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]

phase 1 multi-turn -> phase 2 summary-only -> phase 3 summary-prefix; each phase is an
SFT run (``afm_trainer.recipes.sft``) starting from the latest *complete* checkpoint of
the one before (by verl's tracker file, never by modification time). Re-running the same
command skips finished phases (each leaves ``PHASE_COMPLETE`` last) and resumes an
unfinished one from its last checkpoint. ``DRY_RUN=1`` prints the exact command of every
phase, ``[phase N] command: ...``, the same line a real run prints before running it; a
model that an earlier phase has not produced yet appears as
``DIR/global_step_LATEST/huggingface``.

Data: ``DATA_DIR`` as written by ``data_preprocess/run_pipeline.sh``
(``{multiturn,summary_only,summary_prefix}/{train,val}.parquet``, or their shards), or
per phase ``PHASE{N}_TRAIN_FILES`` / ``PHASE{N}_VAL_FILES``. Per-phase ``PHASE{N}_LR``
(defaults 1e-5, 1e-5, 5e-6) and ``PHASE{N}_EPOCHS`` (defaults 10, 10, 5). Hydra
overrides reach every phase.

With no MODEL and no data, the embedded default runs (``afm_trainer.demo.progressive``,
what ``make demo`` runs).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

from afm_trainer.checkpoints import latest_complete
from afm_trainer.recipes.common import RecipeArgs, RecipeError, recipe_main, run, split_files
from afm_trainer.recipes.sft.main import KEYS as SFT_KEYS
from afm_trainer.recipes.sft.main import build_sft

COMPLETE_MARKER = "PHASE_COMPLETE"
PLACEHOLDER_STEP = "global_step_LATEST"  # in dry runs, for a checkpoint not written yet


@dataclass(frozen=True)
class Phase:
    number: int
    name: str  # also the DATA_DIR subfolder
    lr: str
    epochs: str

    @property
    def folder(self) -> str:
        return f"phase{self.number}_{self.name}"


PHASES = [
    Phase(1, "multiturn", "1e-5", "10"),
    Phase(2, "summary_only", "1e-5", "10"),
    Phase(3, "summary_prefix", "5e-6", "5"),
]

KEYS = {k: v for k, v in SFT_KEYS.items() if k not in ("TRAIN_FILES", "VAL_FILES")}
KEYS["MODEL"] = "HF model folder to start phase 1 from"
KEYS["DATA_DIR"] = "folder written by data_preprocess/run_pipeline.sh"
for _p in PHASES:
    KEYS[f"PHASE{_p.number}_TRAIN_FILES"] = (
        f"phase {_p.number} training parquet (default DATA_DIR/{_p.name}/train.parquet)"
    )
    KEYS[f"PHASE{_p.number}_VAL_FILES"] = (
        f"phase {_p.number} validation parquet (default DATA_DIR/{_p.name}/val.parquet)"
    )
    KEYS[f"PHASE{_p.number}_LR"] = f"phase {_p.number} learning rate (default {_p.lr})"
    KEYS[f"PHASE{_p.number}_EPOCHS"] = f"phase {_p.number} epochs (default {_p.epochs})"
KEYS["DEMO_CONFIG"] = "settings of the embedded default (default afm_trainer/demo/config/progressive.yaml)"
INPUT_KEYS = ("MODEL", "DATA_DIR", "PHASE1_TRAIN_FILES")  # none of them given: the embedded default


def phase_files(args: RecipeArgs, phase: Phase) -> tuple[str, str]:
    train = args.get(f"PHASE{phase.number}_TRAIN_FILES")
    val = args.get(f"PHASE{phase.number}_VAL_FILES")
    if train is None:
        data_dir = args.get("DATA_DIR")
        if data_dir is None:
            raise RecipeError(f"no data for phase {phase.number}: set DATA_DIR or PHASE{phase.number}_TRAIN_FILES")
        folder = os.path.join(data_dir, phase.name)
        train = ",".join(split_files(folder, "train")) or os.path.join(folder, "train.parquet")
        val = val if val is not None else ",".join(split_files(folder, "val"))
    return train, val or ""


def phase_args(args: RecipeArgs, phase: Phase, model: str) -> RecipeArgs:
    """The SFT recipe arguments of one phase."""
    train, val = phase_files(args, phase)
    keys = {key: args.get(key, "") for key in ("CONFIG", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")}
    keys.update(MODEL=model, TRAIN_FILES=train, VAL_FILES=val)
    overrides = [
        f"optim.lr={args.get(f'PHASE{phase.number}_LR', phase.lr)}",
        f"trainer.total_epochs={args.get(f'PHASE{phase.number}_EPOCHS', phase.epochs)}",
        f"trainer.experiment_name={phase.folder}",
        *args.overrides,
    ]
    return RecipeArgs(args.nproc, os.path.join(args.out_dir, phase.folder), keys, overrides)


def final_model(phase_out: str) -> tuple[str, bool]:
    """(the export of phase_out's latest complete checkpoint, whether it exists)."""
    latest = latest_complete(phase_out)
    if latest:
        return os.path.join(latest, "huggingface"), True
    return os.path.join(os.path.abspath(phase_out), PLACEHOLDER_STEP, "huggingface"), False


def train_phases(args: RecipeArgs, model_exists: bool = True) -> Iterator[tuple[Phase, str]]:
    """Run the phases in order, yielding (phase, its final model) after each. A failed
    phase raises PhaseFailed with the trainer's exit code."""
    model = args.get("MODEL")
    if not model:
        raise RecipeError("MODEL is not set (MODEL=path/to/hf_model)")
    for phase in PHASES:
        this = phase_args(args, phase, model)
        marker = os.path.join(this.out_dir, COMPLETE_MARKER)
        if os.path.exists(marker):  # a dry run reports it too: a real run would skip it
            print(f"[phase {phase.number}] complete ({this.out_dir}), skipping", flush=True)
        else:
            if not model_exists and not args.dry_run:
                raise RecipeError(f"phase {phase.number} has no model to start from: {model}")
            code = run(build_sft(this, inputs_exist=model_exists), f"phase {phase.number}", args.dry_run)
            if code != 0:
                raise PhaseFailed(code)
            if not args.dry_run:
                with open(marker + ".tmp", "w") as f:
                    json.dump({"phase": phase.number, "checkpoint": latest_complete(this.out_dir)}, f)
                os.replace(marker + ".tmp", marker)
        model, model_exists = final_model(this.out_dir)
        yield phase, model


class PhaseFailed(Exception):
    def __init__(self, returncode: int):
        super().__init__(f"trainer exited with code {returncode}")
        self.returncode = returncode


def progressive(args: RecipeArgs) -> int:
    if not any(args.get(key) for key in INPUT_KEYS):
        from afm_trainer.demo.progressive import run_embedded_default

        return run_embedded_default(args)
    try:
        phases = list(train_phases(args))
    except PhaseFailed as exc:
        return exc.returncode
    if not args.dry_run:
        _last_phase, model = phases[-1]
        print(f"final model: {model}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return recipe_main(progressive, argv, KEYS)


if __name__ == "__main__":
    raise SystemExit(main())
