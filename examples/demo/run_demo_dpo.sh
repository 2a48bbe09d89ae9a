#!/usr/bin/env bash
# The embedded preference-training demo (`make demo-dpo`, after `make demo`): DPO from the
# demo's final model on its own sampled answers to the demo world's easy code tasks (a
# program that passes its tests preferred to one that does not), SFT on the same pairs'
# chosen answers as the baseline, then the held-out accuracy of the three, greedy and
# sampled. Its settings:
# afm_trainer/demo/config/dpo.yaml (copy it and add DEMO_CONFIG=your.yaml to change them).
#
#   bash examples/demo/run_demo_dpo.sh [OUT_DIR] [SFT_DIR] [KEY=VALUE ...] [hydra overrides ...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${1:-out/demo-dpo}"
sft="${2:-out/demo}"
exec bash "$here/recipes/train_dpo.sh" 2 "$out" "SFT_DIR=$sft" "${@:3}"
