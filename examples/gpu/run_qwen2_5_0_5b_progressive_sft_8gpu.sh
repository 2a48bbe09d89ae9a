#!/usr/bin/env bash
# Progressive SFT of Qwen2.5-0.5B-Instruct on one node with 8 GPUs:
# phase 1 multi-turn -> phase 2 summary-only -> phase 3 summary-prefix.
#
#   bash examples/gpu/run_qwen2_5_0_5b_progressive_sft_8gpu.sh [OUT_DIR [DATA_DIR [hydra overrides ...]]]
#
# OUT_DIR   default out/qwen2_5_0_5b_sft; the final model is the latest checkpoint of
#           OUT_DIR/phase3_summary_prefix (run_qwen2_5_0_5b_grpo_vllm_8gpu.sh starts from it)
# DATA_DIR  default data/agent_sft: the output of data_preprocess/run_pipeline.sh,
#           {multiturn,summary_only,summary_prefix}/{train,val}.parquet
# Environment: MODEL (default Qwen/Qwen2.5-0.5B-Instruct; a local copy works too),
# DRY_RUN=1 (print the three phase commands, run nothing). Re-running resumes.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

OUT_DIR="${1:-${OUT_DIR:-out/qwen2_5_0_5b_sft}}"
DATA_DIR="${2:-${DATA_DIR:-data/agent_sft}}"
shift $(( $# < 2 ? $# : 2 ))
MODEL="${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}"

# Learning rates for full fine-tuning of a 0.5B instruct model (peak of a cosine schedule
# with 5% warm-up): phase 1 teaches the agent format, the later phases refine it on
# shorter contexts, so they use fewer epochs and a lower rate.
# Batches: 64 conversations a step over 8 GPUs; micro-batches are packed by token count
# (verl's dynamic batch size), up to 16k tokens per GPU, samples cut at 4,096 tokens
# (search results make agent traces long). Two checkpoints kept per phase (each holds
# the optimizer state, ~6 GB).
bash "$repo/recipes/train_progressive.sh" 8 "$OUT_DIR" \
    MODEL="$MODEL" \
    DATA_DIR="$DATA_DIR" \
    PHASE1_LR=2e-5 PHASE1_EPOCHS=3 \
    PHASE2_LR=1e-5 PHASE2_EPOCHS=2 \
    PHASE3_LR=5e-6 PHASE3_EPOCHS=2 \
    DRY_RUN="${DRY_RUN:-0}" \
    device=gpu \
    data.train_batch_size=64 \
    data.micro_batch_size_per_gpu=4 \
    data.max_length=4096 \
    data.max_token_len_per_gpu=16384 \
    data.num_workers=4 \
    trainer.max_ckpt_to_keep=2 \
    "$@"
