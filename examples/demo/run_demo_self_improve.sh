#!/usr/bin/env bash
# The self-improvement demo (`make demo-self-improve`): seed 004's chain with no model and
# no data, so it builds a tiny model and seed 004's data on the demo world, trains phases
# A, B (also on unbalanced data) and C on 2 processes and evaluates them with the seed's
# ablations. Its settings: afm_trainer/demo/config/self_improve.yaml (copy it and add
# DEMO_CONFIG=your.yaml to change them).
#
#   bash examples/demo/run_demo_self_improve.sh [OUT_DIR] [KEY=VALUE ...] [hydra overrides ...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${1:-out/demo-self-improve}"
exec bash "$here/recipes/self_improve.sh" 2 "$out" "${@:2}"
