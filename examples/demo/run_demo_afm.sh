#!/usr/bin/env bash
# The AFM demo (`make demo-afm`): seed 001's chain with no model and no data, so it builds
# the demo world's agent chains and a tiny model, trains one model on whole chains (the
# AFM) and one model per role (the multi-agent system) on 2 processes, and compares the
# two on held-out tasks. Its settings: afm_trainer/demo/config/afm.yaml (copy it and add
# DEMO_CONFIG=your.yaml to change them).
#
#   bash examples/demo/run_demo_afm.sh [OUT_DIR] [KEY=VALUE ...] [hydra overrides ...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${1:-out/demo-afm}"
exec bash "$here/recipes/train_afm.sh" 2 "$out" "${@:2}"
