#!/usr/bin/env bash
# The embedded demo (`make demo`): the progressive recipe with no model and no data, so
# it builds the tiny model and the demo world, trains the three phases on the CPU and
# evaluates every stage. Its settings: afm_trainer/demo/config/progressive.yaml (copy it
# and add DEMO_CONFIG=your.yaml to change them).
#
#   bash examples/demo/run_demo.sh [OUT_DIR] [KEY=VALUE ...] [hydra overrides ...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${1:-out/demo}"
exec bash "$here/recipes/train_progressive.sh" 1 "$out" "${@:2}"
