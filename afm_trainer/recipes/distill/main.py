"""Distillation from a teacher's top-k distribution (seed 001: alpha * CE + beta * KL) on
verl's FSDP2 engine.

    bash recipes/train_distill.sh NPROC OUT_DIR MODEL=... TRAIN_FILES=with_teacher.parquet [VAL_FILES=...] \
        [KEY=VALUE ...] [hydra.overrides ...]
    python -m afm_trainer.recipes.distill.main NPROC OUT_DIR ...        (the same)

Runs ``torchrun -m afm_trainer.recipes.distill.trainer`` with ``config/distill.yaml``
beside this file, exactly as the SFT recipe runs verl's SFT trainer: the same keys,
devices, multi-node, DRY_RUN, checkpoints and resume. Data: SFT parquet (``messages``)
with the teacher's top-k added by ``data_preprocess/add_teacher_topk.py``; the teacher
must share the student's tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from afm_trainer.data.distill_dataset import TEACHER_COLUMNS
from afm_trainer.recipes.common import recipe_main, run
from afm_trainer.recipes.sft.main import KEYS as SFT_KEYS
from afm_trainer.recipes.sft.main import build_sft

CONFIG_DIR = Path(__file__).resolve().parent / "config"

KEYS = {
    **SFT_KEYS,
    "TRAIN_FILES": "SFT parquet with the teacher's top-k (add_teacher_topk.py): files, folders of shards or globs",
    "VAL_FILES": "the same for validation (optional)",
    "CONFIG": f"Hydra config name in {CONFIG_DIR} (default: distill)",
}


def build_distill(args, inputs_exist: bool = True):
    return build_sft(
        args,
        inputs_exist,
        trainer="afm_trainer.recipes.distill.trainer",
        config_dir=CONFIG_DIR,
        columns=TEACHER_COLUMNS,  # add_teacher_topk.py writes them beside an SFT file's messages
    )


def main(argv: list[str] | None = None) -> int:
    return recipe_main(lambda args: run(build_distill(args), "distill", args.dry_run), argv, KEYS)


if __name__ == "__main__":
    raise SystemExit(main())
