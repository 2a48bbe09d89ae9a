#!/usr/bin/env bash
# Preference training (DPO, IPO, Cal-DPO, Dr-DPO, beta schedules) on verl's FSDP2 engine,
# on CPU or GPU unchanged.
#
#   bash recipes/train_dpo.sh NPROC OUT_DIR MODEL=... TRAIN_FILES=pairs.parquet [VAL_FILES=...] [KEY=VALUE ...] [hydra.overrides ...]
#
# KEY=VALUE (or the environment): MODEL, TRAIN_FILES, VAL_FILES (parquet with prompt,
# chosen, rejected: data_preprocess/make_pairs.py), CONFIG (in afm_trainer/recipes/dpo/config,
# default dpo), NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, DRY_RUN=1. Anything else is a
# Hydra override, e.g. dpo.loss_type=ipo dpo.beta=0.05 model.lora_rank=16.
# Checkpoints: OUT_DIR/global_step_N/ (with huggingface/); re-running resumes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3 )}"
exec "$PYTHON" -m afm_trainer.recipes.dpo.main "$@"
