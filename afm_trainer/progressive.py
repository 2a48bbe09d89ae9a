"""The progressive three-phase SFT recipe of seed 002, resumable and checkable.

    bash recipes/train_progressive.sh NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]

phase 1 multi-turn -> phase 2 summary-only -> phase 3 summary-prefix; each phase starts
from the latest *complete* checkpoint of the one before (by verl's tracker file, never
by modification time). Re-running the same command skips finished phases (each leaves
``PHASE_COMPLETE`` last) and resumes an unfinished one from its last checkpoint.
``DRY_RUN=1`` prints the exact command of every phase, ``[phase N] command: ...``, the
same line a real run prints before running it; a model that an earlier phase has not
produced yet appears as ``DIR/global_step_LATEST/huggingface``.

With no MODEL and no data, the embedded default runs: the tiny model and the demo
world are built, trained through the three phases, evaluated on held-out sets before
and after each phase, and reported in OUT_DIR/report.md (see afm_trainer/demo.py).

Data: ``DATA_DIR`` as written by ``data_preprocess/run_pipeline.sh``
(``{multiturn,summary_only,summary_prefix}/{train,val}.parquet``), or per phase
``PHASE{N}_TRAIN_FILES`` / ``PHASE{N}_VAL_FILES``. Per-phase ``PHASE{N}_LR`` (defaults
1e-5, 1e-5, 5e-6) and ``PHASE{N}_EPOCHS`` (defaults 10, 10, 5). Hydra overrides reach
every phase.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from afm_trainer.checkpoints import latest_complete
from afm_trainer.launch import SFT_KEYS, RecipeArgs, RecipeError, build_sft, parse_recipe_args, run

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


PHASES = [Phase(1, "multiturn", "1e-5", "10"), Phase(2, "summary_only", "1e-5", "10"), Phase(3, "summary_prefix", "5e-6", "5")]

KEYS = {k: v for k, v in SFT_KEYS.items() if k not in ("TRAIN_FILES", "VAL_FILES")}
KEYS["MODEL"] = "HF model folder to start phase 1 from"
KEYS["DATA_DIR"] = "folder written by data_preprocess/run_pipeline.sh"
for _p in PHASES:
    KEYS[f"PHASE{_p.number}_TRAIN_FILES"] = f"phase {_p.number} training parquet (default DATA_DIR/{_p.name}/train.parquet)"
    KEYS[f"PHASE{_p.number}_VAL_FILES"] = f"phase {_p.number} validation parquet (default DATA_DIR/{_p.name}/val.parquet)"
    KEYS[f"PHASE{_p.number}_LR"] = f"phase {_p.number} learning rate (default {_p.lr})"
    KEYS[f"PHASE{_p.number}_EPOCHS"] = f"phase {_p.number} epochs (default {_p.epochs})"


def phase_files(args: RecipeArgs, phase: Phase) -> tuple[str, str]:
    data_dir = args.get("DATA_DIR")
    train = args.get(f"PHASE{phase.number}_TRAIN_FILES")
    val = args.get(f"PHASE{phase.number}_VAL_FILES")
    if train is None:
        if data_dir is None:
            raise RecipeError(f"no data for phase {phase.number}: set DATA_DIR or PHASE{phase.number}_TRAIN_FILES")
        train = os.path.join(data_dir, phase.name, "train.parquet")
        default_val = os.path.join(data_dir, phase.name, "val.parquet")
        val = val if val is not None else (default_val if os.path.exists(default_val) else "")
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


def start_model(previous_out: str) -> tuple[str, bool]:
    """(the export of previous_out's latest complete checkpoint, whether it exists)."""
    latest = latest_complete(previous_out)
    if latest:
        return os.path.join(latest, "huggingface"), True
    return os.path.join(os.path.abspath(previous_out), PLACEHOLDER_STEP, "huggingface"), False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_recipe_args(argv, KEYS)
        dry_run = args.get("DRY_RUN", "0") not in ("0", "false")
        embedded = not any(args.get(k) for k in ("MODEL", "DATA_DIR", "PHASE1_TRAIN_FILES"))
        if embedded:  # no model, no data: the demo world, end to end (afm_trainer/demo.py)
            from afm_trainer import demo

            paths = demo.embedded_paths(args.out_dir) if dry_run else demo.prepare(args.out_dir)
            args.keys = {**demo.embedded_keys(paths), **args.keys}
            stage_results = {} if dry_run else {"untrained": demo.evaluate_stage(args.out_dir, "untrained", paths["model"])}
        model = args.get("MODEL")
        if not model:
            raise RecipeError("MODEL is not set (MODEL=path/to/hf_model)")
        model_exists = not (embedded and dry_run)  # a dry run of the demo has built nothing yet
        for phase in PHASES:
            this = phase_args(args, phase, model)
            marker = os.path.join(this.out_dir, COMPLETE_MARKER)
            if os.path.exists(marker):  # a dry run reports it too: a real run would skip it
                print(f"[phase {phase.number}] complete ({this.out_dir}), skipping", flush=True)
            else:
                if not model_exists and not dry_run:
                    raise RecipeError(f"phase {phase.number} has no model to start from: {model}")
                code = run(build_sft(this, inputs_exist=model_exists), f"phase {phase.number}", dry_run)
                if code != 0:
                    return code
                if not dry_run:
                    with open(marker + ".tmp", "w") as f:
                        json.dump({"phase": phase.number, "checkpoint": latest_complete(this.out_dir)}, f)
                    os.replace(marker + ".tmp", marker)
            model, model_exists = start_model(this.out_dir)
            if embedded and not dry_run:
                stage_results[phase.folder] = demo.evaluate_stage(args.out_dir, phase.folder, model)
        if not dry_run:
            print(f"final model: {model}", flush=True)
            if embedded:
                demo.write_report(args.out_dir, stage_results)
        return 0
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
