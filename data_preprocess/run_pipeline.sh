#!/usr/bin/env bash
# Search-agent traces -> the three training sets of the progressive recipe.
#
#   bash data_preprocess/run_pipeline.sh IN.jsonl OUT_DIR
#
# Environment: BACKEND (extractive | openai; default extractive), BASE_URL, SUMMARY_MODEL,
# MAX_CONCURRENT, CACHE_DIR (default OUT_DIR/summary_cache) for the openai backend;
# VAL_RATIO (0.1), SEED (42), MIN_SCORE (unset: keep all), TOKENIZER (for token stats).
# Writes OUT_DIR/{multiturn,summary_only,summary_prefix}/{train,val}.parquet; every
# step's rejects and report sit beside its output in OUT_DIR/work/.
set -euo pipefail
if [ $# -ne 2 ]; then echo "usage: $0 IN.jsonl OUT_DIR" >&2; exit 2; fi
in="$1"; out="$2"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-$( [ -x "$here/../.venv/bin/python" ] && echo "$here/../.venv/bin/python" || echo python3 )}"
work="$out/work"; mkdir -p "$work"
common=(--format search_agent --input_file "$in" --dedup)
[ -n "${MIN_SCORE:-}" ] && common+=(--min_score "$MIN_SCORE")
[ -n "${TOKENIZER:-}" ] && common+=(--tokenizer "$TOKENIZER")

"$PYTHON" "$here/convert_traces.py" "${common[@]}" --mode multiturn --output_file "$work/multiturn.parquet"
"$PYTHON" "$here/convert_traces.py" "${common[@]}" --mode stepwise --output_file "$work/steps.parquet"
summary_args=(--backend "${BACKEND:-extractive}")
if [ "${BACKEND:-extractive}" = openai ]; then
  summary_args+=(--base_url "${BASE_URL:-https://api.openai.com/v1}" --model "${SUMMARY_MODEL:-gpt-4o-mini}"
                 --max_concurrent "${MAX_CONCURRENT:-8}" --cache_dir "${CACHE_DIR:-$out/summary_cache}")
fi
"$PYTHON" "$here/add_summaries.py" --input_file "$work/steps.parquet" --output_file "$work/steps_summary.parquet" "${summary_args[@]}"
"$PYTHON" "$here/split_summary_datasets.py" --input_file "$work/steps_summary.parquet" \
  --output_dataset1 "$work/summary_prefix.parquet" --output_dataset2 "$work/summary_only.parquet"
for name in multiturn summary_only summary_prefix; do
  "$PYTHON" "$here/prepare_train_val.py" --input_file "$work/$name.parquet" --output_dir "$out/$name" \
    --val_ratio "${VAL_RATIO:-0.1}" --seed "${SEED:-42}"
done
echo "training sets: $out/{multiturn,summary_only,summary_prefix}/{train,val}.parquet"
