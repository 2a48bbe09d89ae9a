#!/usr/bin/env bash
# GRPO with vLLM rollouts on two nodes with 8 GPUs each, joining a running Ray cluster.
# Start Ray first, then run this once, on the head node:
#
#   node 0:  ray start --head --port=6379
#   node 1:  ray start --address=NODE0_ADDRESS:6379
#   (When the head uses token authentication -- Ray does once ~/.ray/auth_token exists
#   there -- copy that token to node 1's ~/.ray/auth_token and start it with
#   RAY_AUTH_MODE=token; this recipe finds the token on node 0 by itself.)
#   node 0:  RAY_ADDRESS=NODE0_ADDRESS:6379 bash examples/gpu/run_qwen2_5_0_5b_grpo_vllm_2nodes.sh [OUT_DIR [RL_DATA_DIR [hydra overrides ...]]]
#
# OUT_DIR, RL_DATA_DIR and SFT_DIR must be on a filesystem every node shares.
# Environment: RAY_ADDRESS (required), SFT_DIR (default out/qwen2_5_0_5b_sft), MODEL,
# CORPUS or SEARCH_URL, STEPS (200), DRY_RUN=1 (print the command and verl's verdict).
# The settings are the 8-GPU example's, with twice the prompts a step.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

OUT_DIR="${1:-${OUT_DIR:-out/qwen2_5_0_5b_grpo}}"
RL_DATA_DIR="${2:-${RL_DATA_DIR:-data/agent_rl}}"
shift $(( $# < 2 ? $# : 2 ))
SFT_DIR="${SFT_DIR:-out/qwen2_5_0_5b_sft}"

bash "$repo/recipes/train_grpo.sh" 8 "$OUT_DIR" \
    SFT_DIR="$SFT_DIR" \
    TRAIN_FILES="$RL_DATA_DIR/train.parquet" \
    VAL_FILES="$RL_DATA_DIR/val.parquet" \
    ROLLOUT=vllm \
    NNODES=2 \
    RAY_ADDRESS="${RAY_ADDRESS:?set RAY_ADDRESS: host:port of the Ray head (ray start --head)}" \
    STEPS="${STEPS:-200}" \
    DRY_RUN="${DRY_RUN:-0}" \
    data.train_batch_size=256 \
    data.max_prompt_length=1024 \
    data.max_response_length=1024 \
    actor_rollout_ref.rollout.n=8 \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=32 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=32 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
    trainer.save_freq=50 \
    trainer.test_freq=25 \
    "$@"
