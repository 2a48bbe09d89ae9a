#!/usr/bin/env bash
# Progressive SFT of Qwen2.5-0.5B-Instruct on two nodes with 8 GPUs each (16 ranks).
# Run the same command on both nodes, with NODE_RANK=0 on the node at MASTER_ADDR and
# NODE_RANK=1 on the other; OUT_DIR and DATA_DIR must be on a filesystem both nodes
# share (each phase starts from the checkpoint the previous one wrote).
#
#   NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash examples/gpu/run_qwen2_5_0_5b_progressive_sft_2nodes.sh [OUT_DIR [DATA_DIR [hydra overrides ...]]]
#   NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash examples/gpu/run_qwen2_5_0_5b_progressive_sft_2nodes.sh [OUT_DIR [DATA_DIR [hydra overrides ...]]]
#
# Environment: NODE_RANK and MASTER_ADDR (required), MASTER_PORT (29500), MODEL (default
# Qwen/Qwen2.5-0.5B-Instruct), DRY_RUN=1 (print the commands, run nothing).
# The settings are the 8-GPU example's, with twice the global batch.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

OUT_DIR="${1:-${OUT_DIR:-out/qwen2_5_0_5b_sft}}"
DATA_DIR="${2:-${DATA_DIR:-data/agent_sft}}"
shift $(( $# < 2 ? $# : 2 ))
MODEL="${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}"

bash "$repo/recipes/train_progressive.sh" 8 "$OUT_DIR" \
    MODEL="$MODEL" \
    DATA_DIR="$DATA_DIR" \
    NNODES=2 \
    NODE_RANK="${NODE_RANK:?set NODE_RANK: 0 on the MASTER_ADDR node, 1 on the other}" \
    MASTER_ADDR="${MASTER_ADDR:?set MASTER_ADDR: the address of the NODE_RANK=0 node}" \
    MASTER_PORT="${MASTER_PORT:-29500}" \
    PHASE1_LR=2e-5 PHASE1_EPOCHS=3 \
    PHASE2_LR=1e-5 PHASE2_EPOCHS=2 \
    PHASE3_LR=5e-6 PHASE3_EPOCHS=2 \
    DRY_RUN="${DRY_RUN:-0}" \
    device=gpu \
    data.train_batch_size=128 \
    data.micro_batch_size_per_gpu=4 \
    data.max_length=4096 \
    data.max_token_len_per_gpu=16384 \
    data.num_workers=4 \
    trainer.max_ckpt_to_keep=2 \
    "$@"
