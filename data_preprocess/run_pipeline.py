"""Search-agent traces -> the three training sets of the progressive recipe.

    python data_preprocess/run_pipeline.py IN.jsonl OUT_DIR [--min_score X] [--tokenizer PATH]
        [--backend extractive|openai] [--base_url URL --summary_model NAME --max_concurrent N
        --cache_dir DIR] [--val_ratio 0.1] [--seed 42] [--shards N]

(``bash data_preprocess/run_pipeline.sh IN.jsonl OUT_DIR`` is this, with the options
from the environment.) Writes OUT_DIR/{multiturn,summary_only,summary_prefix}/
{train,val}.parquet; every step's output, rejects and report sit in OUT_DIR/work/.
"""

import argparse
import sys

from afm_trainer.data.parquet_io import InputError, fail
from afm_trainer.data.pipeline import DATASETS, run_pipeline


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Search-agent traces -> the progressive recipe's three training sets.")
    parser.add_argument("traces")
    parser.add_argument("out_dir")
    parser.add_argument("--min_score", type=float, default=None, help="reject trajectories scoring below this")
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer for token-length percentiles")
    parser.add_argument("--backend", default="extractive", choices=["extractive", "openai"])
    parser.add_argument("--base_url", default="https://api.openai.com/v1")
    parser.add_argument("--summary_model", default="gpt-4o-mini")
    parser.add_argument("--max_concurrent", type=int, default=8)
    parser.add_argument("--cache_dir", default=None, help="openai: summary cache (default OUT_DIR/summary_cache)")
    parser.add_argument("--val_ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--shards", type=int, default=1)
    args = parser.parse_args(argv)
    openai_options = {
        "base_url": args.base_url,
        "model": args.summary_model,
        "max_concurrent": args.max_concurrent,
        "cache_dir": args.cache_dir or f"{args.out_dir}/summary_cache",
    }
    try:
        report = run_pipeline(
            args.traces,
            args.out_dir,
            min_score=args.min_score,
            tokenizer=args.tokenizer,
            backend=args.backend,
            openai_options=openai_options,
            val_ratio=args.val_ratio,
            seed=args.seed,
            shards=args.shards,
        )
    except InputError as exc:
        return fail(exc)
    for mode in ("multiturn", "stepwise"):
        r = report[f"convert {mode}"]
        print(
            f"convert {mode}: {r['records_in']} records in, {r['records_converted']} converted into "
            f"{r['samples_out']} samples, {r['records_rejected']} rejected"
        )
    s = report["summaries"]
    print(f"summaries: {s['summarised']} of {s['samples']} samples, {s['rejected']} rejected")
    for name in DATASETS:
        c = report[f"split {name}"]
        print(f"{args.out_dir}/{name}: train {c['train_samples']} samples, val {c['val_samples']} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
