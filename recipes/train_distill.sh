#!/usr/bin/env bash
# Distillation from a teacher's top-k distribution, seed 001's alpha * CE + beta * KL, on
# verl's SFT engine (FSDP2), on CPU or GPU unchanged.
#
#   bash recipes/train_distill.sh NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]
#
# KEY=VALUE (or the environment): MODEL, TRAIN_FILES, VAL_FILES (SFT parquet with the
# teacher's top-k: data_preprocess/add_teacher_topk.py), CONFIG (Hydra config in
# afm_trainer/recipes/distill/config, default distill), NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT, DRY_RUN=1. Anything else is a Hydra override, e.g. distill.alpha=0.7
# distill.beta=0.3 distill.divergence=reverse_kl optim.lr=1e-4.
# Checkpoints: OUT_DIR/global_step_N/ (with huggingface/); re-running resumes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3 )}"
exec "$PYTHON" -m afm_trainer.recipes.distill.main "$@"
