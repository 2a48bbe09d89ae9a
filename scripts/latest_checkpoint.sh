#!/usr/bin/env bash
# Print the latest checkpoint verl finished writing in a training output folder.
#
#   bash scripts/latest_checkpoint.sh DIR
#
# DIR is a recipe's OUT_DIR (or one phase of it, e.g. OUT_DIR/phase3_summary_prefix).
# Prints DIR/global_step_N, the step verl's tracker file names, once its files are checked
# (every rank's model shard and a huggingface/ export); never chosen by modification time.
# Exit code 1, with one line on stderr, when that step is missing or incomplete, or when
# DIR has no checkpoint.
# Wraps `python -m afm_trainer.checkpoints latest DIR`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3 )}"
if [ $# -ne 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
  [ $# -eq 1 ] && exit 0 || exit 2
fi
exec "$PYTHON" -m afm_trainer.checkpoints latest "$1"
