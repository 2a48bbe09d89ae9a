#!/usr/bin/env bash
# Build a tiny Qwen2-architecture model (tokenizer trained here, random weights) offline.
#
#   bash scripts/build_tiny_model.sh OUT_DIR [--size nano|tiny|small] [--seed N] [--vocab_size N]
#                                            [--corpus FILE] [--domain FILE]
#
# Writes a Hugging Face model folder (config.json, weights, tokenizer, ChatML chat
# template, the project's tags as single tokens) that every recipe takes as MODEL=OUT_DIR.
# Sizes: nano (~0.4M parameters, for tests), tiny (4.2M, the demo's), small (~20M). Seconds
# on a CPU, nothing downloaded. Wraps `python -m afm_trainer.models.tiny --out OUT_DIR`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3 )}"
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
  echo
  echo "Options of afm_trainer.models.tiny:"
  "$PYTHON" -m afm_trainer.models.tiny --help | sed -n '/^options:/,$p' | grep -v -e '--out OUT'
  [ $# -ge 1 ] && exit 0 || exit 2
fi
out="$1"; shift
exec "$PYTHON" -m afm_trainer.models.tiny --out "$out" "$@"
