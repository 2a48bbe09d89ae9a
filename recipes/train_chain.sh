#!/usr/bin/env bash
# A chain of training stages declared in a YAML file (SFT, preference training), each
# starting from the latest complete checkpoint of an earlier one.
#
#   bash recipes/train_chain.sh CHAIN NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]
#
# CHAIN: a YAML file, or a name in afm_trainer/recipes/chain/config/ (progressive,
# self_improve): copy one to write your own. KEY=VALUE (or the environment): MODEL,
# DATA_DIR (one subfolder of train/val parquet per stage), per stage <KEY>_TRAIN_FILES /
# _VAL_FILES / _LR / _EPOCHS, CONFIG, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT,
# DRY_RUN=1 (print every stage's command only). Anything else is a Hydra override applied
# to every stage (dpo.* ones to the preference stages only). Re-running resumes: finished
# stages are skipped, an unfinished one continues from its last checkpoint.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3 )}"
exec "$PYTHON" -m afm_trainer.recipes.chain.main "$@"
