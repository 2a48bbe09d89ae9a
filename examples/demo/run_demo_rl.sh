#!/usr/bin/env bash
# The embedded RL demo (`make demo-rl`, after `make demo`): GRPO from the demo's final
# model on the demo world's easy code tasks, 20 steps on the CPU. Its settings:
# afm_trainer/demo/config/grpo.yaml (copy it and add DEMO_CONFIG=your.yaml to change them).
#
#   bash examples/demo/run_demo_rl.sh [OUT_DIR] [SFT_DIR] [KEY=VALUE ...] [hydra overrides ...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${1:-out/demo-rl}"
sft="${2:-out/demo}"
exec bash "$here/recipes/train_grpo.sh" 1 "$out" "SFT_DIR=$sft" "${@:3}"
