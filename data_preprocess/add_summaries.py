"""Add a `summary` column to stepwise samples (the context before each target turn).

    python data_preprocess/add_summaries.py --input_file STEPS.parquet --output_file OUT.parquet \
        --backend {openai,extractive} [--base_url URL --model NAME --max_concurrent N --cache_dir DIR]

`extractive` works offline. `openai` talks to any OpenAI-compatible server (key from
OPENAI_API_KEY); with --cache_dir a re-run after a crash asks only for what is missing.
A row whose summary finally fails goes to OUT.rejects.jsonl with the reason, never into
OUT.parquet with an empty summary. Exit 1 with one error line if the input is unreadable.
"""

import argparse
import os
import sys

from afm_trainer.data.parquet_io import InputError, fail, refuse_overwriting_inputs
from afm_trainer.data.summaries import add_summaries


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Add summaries to stepwise samples.")
    parser.add_argument("--input_file", required=True, help="stepwise parquet from convert_traces.py")
    parser.add_argument("--output_file", required=True)
    parser.add_argument("--backend", default="extractive", choices=["openai", "extractive"])
    parser.add_argument("--base_url", default=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"))
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--max_concurrent", type=int, default=8)
    parser.add_argument("--max_retries", type=int, default=5)
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds per request attempt, all of it: connecting, sending and the full reply (then retried)",
    )
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles each retry)")
    parser.add_argument("--cache_dir", default=None)
    args = parser.parse_args(argv)
    options = {
        "base_url": args.base_url,
        "model": args.model,
        "max_concurrent": args.max_concurrent,
        "cache_dir": args.cache_dir,
        "max_retries": args.max_retries,
        "timeout_s": args.timeout,
        "backoff_s": args.backoff,
    }
    try:
        refuse_overwriting_inputs([args.input_file], [args.output_file, args.output_file + ".rejects.jsonl"])
        counts = add_summaries(args.input_file, args.output_file, args.backend, **options)
    except InputError as exc:
        return fail(exc)
    print(
        f"{counts['samples']} samples: {counts['summarised']} summarised, {counts['rejected']} rejected "
        f"(see {args.output_file}.rejects.jsonl)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
