"""Add a `summary` column to stepwise samples (the context before each target turn).

    python data_preprocess/add_summaries.py --input_file STEPS.parquet --output_file OUT.parquet \
        --backend {openai,extractive} [--base_url URL --model NAME --max_concurrent N --cache_dir DIR]

`extractive` works offline. `openai` talks to any OpenAI-compatible server (key from
OPENAI_API_KEY); with --cache_dir a re-run after a crash asks only for what is missing.
A row whose summary finally fails goes to OUT.rejects.jsonl with the reason, never into
OUT.parquet with an empty summary. Exit 1 with one error line if the input is unreadable.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyarrow as pa  # noqa: E402

from afm_trainer.data.parquet_io import InputError, read_table, write_rows  # noqa: E402

from afm_trainer.data.summaries import OpenAISummarizer, extractive_summary  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Add summaries to stepwise samples.")
    parser.add_argument("--input_file", required=True, help="stepwise parquet from convert_traces.py")
    parser.add_argument("--output_file", required=True)
    parser.add_argument("--backend", default="extractive", choices=["openai", "extractive"])
    parser.add_argument("--base_url", default=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"))
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--max_concurrent", type=int, default=8)
    parser.add_argument("--max_retries", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles each retry)")
    parser.add_argument("--cache_dir", default=None)
    args = parser.parse_args(argv)
    try:
        table = read_table(args.input_file, "messages", "convert it with convert_traces.py --mode stepwise")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = table.to_pylist()
    contexts = [row["messages"][:-1] for row in rows]
    if args.backend == "extractive":
        results = [extractive_summary(c) for c in contexts]
    else:
        summarizer = OpenAISummarizer(args.base_url, args.model, args.max_concurrent, args.cache_dir,
                                      args.max_retries, args.timeout, args.backoff)  # fmt: skip
        results = summarizer.summarize(contexts)

    kept, rejected = [], 0
    with open(args.output_file + ".rejects.jsonl.tmp", "w") as rejects:
        for index, (row, result) in enumerate(zip(rows, results)):
            if isinstance(result, BaseException):
                rejected += 1
                rejects.write(json.dumps({"where": f"row {index}", "reason": str(result), "record": row}, default=str) + "\n")
            else:
                kept.append({**row, "summary": result})
    write_rows(kept, table.schema.append(pa.field("summary", pa.string())), args.output_file)
    os.replace(args.output_file + ".rejects.jsonl.tmp", args.output_file + ".rejects.jsonl")
    print(f"{len(rows)} samples: {len(kept)} summarised, {rejected} rejected (see {args.output_file}.rejects.jsonl)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
