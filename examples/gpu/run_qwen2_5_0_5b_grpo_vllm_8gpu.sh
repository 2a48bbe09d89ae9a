#!/usr/bin/env bash
# GRPO with vLLM rollouts on one node with 8 GPUs, from the progressive SFT model of
# run_qwen2_5_0_5b_progressive_sft_8gpu.sh.
#
#   bash examples/gpu/run_qwen2_5_0_5b_grpo_vllm_8gpu.sh [OUT_DIR [RL_DATA_DIR [hydra overrides ...]]]
#
# OUT_DIR      default out/qwen2_5_0_5b_grpo (checkpoints, metrics.jsonl, report.md)
# RL_DATA_DIR  default data/agent_rl: train.parquet and val.parquet written by
#              data_preprocess/make_rl_data.py
# Environment: SFT_DIR (default out/qwen2_5_0_5b_sft: the start model is the latest
# complete checkpoint of SFT_DIR/phase3_summary_prefix), MODEL (start from this model
# instead), CORPUS or SEARCH_URL (the search tool, for rows that use it), STEPS (200),
# DRY_RUN=1 (print the command and verl's verdict on the configuration, run nothing).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

OUT_DIR="${1:-${OUT_DIR:-out/qwen2_5_0_5b_grpo}}"
RL_DATA_DIR="${2:-${RL_DATA_DIR:-data/agent_rl}}"
shift $(( $# < 2 ? $# : 2 ))
SFT_DIR="${SFT_DIR:-out/qwen2_5_0_5b_sft}"

# 128 prompts a step, 8 answers each (GRPO compares the answers to one prompt), four
# policy updates a step (mini-batches of 32 prompts); lr 1e-6 with the KL loss of
# grpo.yaml keeps the policy near the SFT model. vLLM takes 60% of each GPU's memory,
# the FSDP actor and reference the rest; a 0.5B model needs no tensor parallelism.
bash "$repo/recipes/train_grpo.sh" 8 "$OUT_DIR" \
    SFT_DIR="$SFT_DIR" \
    TRAIN_FILES="$RL_DATA_DIR/train.parquet" \
    VAL_FILES="$RL_DATA_DIR/val.parquet" \
    ROLLOUT=vllm \
    STEPS="${STEPS:-200}" \
    DRY_RUN="${DRY_RUN:-0}" \
    data.train_batch_size=128 \
    data.max_prompt_length=1024 \
    data.max_response_length=1024 \
    actor_rollout_ref.rollout.n=8 \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size=32 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=32 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=32 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
    trainer.save_freq=50 \
    trainer.test_freq=25 \
    "$@"
