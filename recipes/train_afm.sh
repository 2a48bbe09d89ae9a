#!/usr/bin/env bash
# Seed 001's Agent Foundation Model and its multi-agent baseline: one model trained on
# whole Planner -> Coder -> Reviewer chains (every agent's turn, the chain as one call),
# and one model per role trained on that role's turns, each from MODEL: the chain
# afm_trainer/recipes/chain/config/afm.yaml (recipes/train_chain.sh).
#
#   bash recipes/train_afm.sh NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]
#
# KEY=VALUE (or the environment): MODEL, DATA_DIR (data_preprocess/make_afm_data.py
# output: afm/, planner/, coder/, reviewer/), {AFM,PLANNER,CODER,REVIEWER}_TRAIN_FILES /
# _VAL_FILES / _LR / _EPOCHS, CONFIG, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT,
# DRY_RUN=1. With no MODEL and no data, the embedded demo runs (`make demo-afm`; its
# settings are afm_trainer/demo/config/afm.yaml). Re-running resumes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3 )}"
exec "$PYTHON" -m afm_trainer.recipes.chain.main afm "$@"
