#!/usr/bin/env bash
# RL on verl: GRPO (ALGO=ppo: PPO with a critic) from the progressive recipe's final model.
#
#   bash recipes/train_grpo.sh NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]
#
# KEY=VALUE (or the environment): MODEL (default: latest checkpoint of
# SFT_DIR/phase3_summary_prefix, SFT_DIR defaults to out/demo), TRAIN_FILES / VAL_FILES
# (data_preprocess/make_rl_data.py: files, folders of shards or globs; default: the embedded
# demo, afm_trainer/demo/config/grpo.yaml, DEMO_CONFIG to use a copy), CORPUS or SEARCH_URL
# (the search tool; the embedded demo: its world's corpus), ALGO=grpo|ppo,
# ROLLOUT=vllm|hf (default vllm with GPUs, hf on CPU), STEPS (20), NNODES, RAY_ADDRESS
# (join a running Ray cluster), DRY_RUN=1 (print the command and the configuration verl
# validates, run nothing). Re-running resumes from the last checkpoint.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3 )}"
exec "$PYTHON" -m afm_trainer.recipes.grpo.main "$@"
