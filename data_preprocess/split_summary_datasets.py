"""Make the two summary datasets of seed 002 from summarised stepwise samples.

    python data_preprocess/split_summary_datasets.py --input_file SUMMARISED.parquet \
        --summary_prefix_file PREFIX.parquet --summary_only_file ONLY.parquet

Summary prefix: full context -> <summary>...</summary> + the target turn.
Summary only: the summary as the only context -> the target turn.
"""

import argparse
import sys

from afm_trainer.data.parquet_io import InputError, fail, refuse_overwriting_inputs
from afm_trainer.data.summaries import write_summary_datasets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Split summarised samples into summary-prefix and summary-only sets.")
    parser.add_argument("--input_file", required=True)
    parser.add_argument("--summary_prefix_file", required=True, help="summary-prefix parquet (seed 002's dataset 1)")
    parser.add_argument("--summary_only_file", required=True, help="summary-only parquet (seed 002's dataset 2)")
    args = parser.parse_args(argv)
    try:
        refuse_overwriting_inputs([args.input_file], [args.summary_prefix_file, args.summary_only_file])
        n = write_summary_datasets(args.input_file, args.summary_prefix_file, args.summary_only_file)
    except InputError as exc:
        return fail(exc)
    print(f"{n} samples -> {args.summary_prefix_file}, {args.summary_only_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
