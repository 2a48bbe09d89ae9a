#!/usr/bin/env bash
# Progressive SFT (seed 002): phase 1 multi-turn -> phase 2 summary-only -> phase 3
# summary-prefix, each phase starting from the latest complete checkpoint of the one before:
# the chain afm_trainer/recipes/chain/config/progressive.yaml (recipes/train_chain.sh).
#
#   bash recipes/train_progressive.sh NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]
#
# KEY=VALUE (or the environment): MODEL (start model), DATA_DIR (run_pipeline.sh output),
# PHASE{1,2,3}_TRAIN_FILES / _VAL_FILES / _LR (1e-5, 1e-5, 5e-6) / _EPOCHS (10, 10, 5),
# CONFIG, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, DRY_RUN=1 (print the commands only).
# With no MODEL and no data, the embedded demo runs (`make demo`; its settings are
# afm_trainer/demo/config/progressive.yaml, DEMO_CONFIG=copy.yaml to use a copy).
# Anything else is a Hydra override applied to every phase. Re-running resumes: finished
# phases are skipped, an unfinished one continues from its last checkpoint.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3 )}"
exec "$PYTHON" -m afm_trainer.recipes.chain.main progressive "$@"
