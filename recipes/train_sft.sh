#!/usr/bin/env bash
# Supervised fine-tuning with verl's SFT trainer (FSDP2), on CPU or GPU unchanged.
#
#   bash recipes/train_sft.sh NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]
#
# KEY=VALUE (or the environment): MODEL, TRAIN_FILES, VAL_FILES (comma-separated
# parquet files with a `messages` column), CONFIG (Hydra config in afm_trainer/recipes/sft/config,
# default sft; its device group is set to cpu or gpu from what torch sees), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT, DRY_RUN=1 (print the command only). Anything else is a Hydra override,
# e.g. optim.lr=1e-4 trainer.total_epochs=3 model.lora_rank=16.
# Checkpoints: OUT_DIR/global_step_N/ (with huggingface/); re-running resumes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3 )}"
exec "$PYTHON" -m afm_trainer.recipes.sft.main "$@"
