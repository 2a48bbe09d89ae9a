#!/usr/bin/env bash
# Search-agent traces -> the three training sets of the progressive recipe.
#
#   bash data_preprocess/run_pipeline.sh IN.jsonl OUT_DIR
#
# Environment: BACKEND (extractive | openai; default extractive), BASE_URL, SUMMARY_MODEL,
# MAX_CONCURRENT, CACHE_DIR (default OUT_DIR/summary_cache) for the openai backend;
# VAL_RATIO (0.1), SEED (42), SHARDS (1), MIN_SCORE (unset: keep all), TOKENIZER (for
# token stats). Writes OUT_DIR/{multiturn,summary_only,summary_prefix}/{train,val}.parquet;
# every step's rejects and report sit beside its output in OUT_DIR/work/.
# (data_preprocess/run_pipeline.py is the same with options as flags.)
set -euo pipefail
if [ $# -ne 2 ]; then echo "usage: $0 IN.jsonl OUT_DIR" >&2; exit 2; fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-$( [ -x "$here/../.venv/bin/python" ] && echo "$here/../.venv/bin/python" || echo python3 )}"
args=("$1" "$2" --backend "${BACKEND:-extractive}" --val_ratio "${VAL_RATIO:-0.1}" --seed "${SEED:-42}" --shards "${SHARDS:-1}")
[ -n "${MIN_SCORE:-}" ] && args+=(--min_score "$MIN_SCORE")
[ -n "${TOKENIZER:-}" ] && args+=(--tokenizer "$TOKENIZER")
[ -n "${BASE_URL:-}" ] && args+=(--base_url "$BASE_URL")
[ -n "${SUMMARY_MODEL:-}" ] && args+=(--summary_model "$SUMMARY_MODEL")
[ -n "${MAX_CONCURRENT:-}" ] && args+=(--max_concurrent "$MAX_CONCURRENT")
[ -n "${CACHE_DIR:-}" ] && args+=(--cache_dir "$CACHE_DIR")
exec "$PYTHON" "$here/run_pipeline.py" "${args[@]}"
