#!/usr/bin/env bash
# Seed 004's self-improvement chain: phase A direct-answer SFT -> phase B chain-of-thought
# distillation (question + student draft -> teacher reasoning -> answer) -> phase C
# preference training (the teacher's turn over a wrong draft), each phase starting from
# the latest complete checkpoint of the one before: the chain
# afm_trainer/recipes/chain/config/self_improve.yaml (recipes/train_chain.sh).
#
#   bash recipes/self_improve.sh NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]
#
# KEY=VALUE (or the environment): MODEL, DATA_DIR (data_preprocess/make_self_improve_data.py
# output: track_a/, track_b/, pairs/), PHASE_{A,B,C}_TRAIN_FILES / _VAL_FILES / _LR /
# _EPOCHS, CONFIG, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, DRY_RUN=1. With no MODEL
# and no data, the embedded demo runs (`make demo-self-improve`; its settings are
# afm_trainer/demo/config/self_improve.yaml). Hydra overrides reach every phase (dpo.*
# ones phase C only). Re-running resumes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3 )}"
exec "$PYTHON" -m afm_trainer.recipes.chain.main self_improve "$@"
