#!/usr/bin/env bash
# The search-agent RL demo (`make demo-rl-search`, after `make demo`): GRPO from the demo's
# final model on the demo world's easy multi-hop questions, the model searching the
# world's corpus over several turns. Its settings: afm_trainer/demo/config/grpo_search.yaml
# (copy it and pass DEMO_CONFIG=your.yaml to change them; ALGO=ppo for PPO).
#
#   bash examples/demo/run_demo_rl_search.sh [OUT_DIR] [SFT_DIR] [KEY=VALUE ...] [hydra overrides ...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${1:-out/demo-rl-search}"
sft="${2:-out/demo}"
exec bash "$here/recipes/train_grpo.sh" 1 "$out" "SFT_DIR=$sft" "DEMO_CONFIG=$here/afm_trainer/demo/config/grpo_search.yaml" "${@:3}"
