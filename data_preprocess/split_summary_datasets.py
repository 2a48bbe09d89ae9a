"""Make the two summary datasets of seed 002 from summarised stepwise samples.

    python data_preprocess/split_summary_datasets.py --input_file SUMMARISED.parquet \
        --output_dataset1 PREFIX.parquet --output_dataset2 ONLY.parquet

Dataset 1 (summary prefix): full context -> <summary>...</summary> + the target turn.
Dataset 2 (summary only): the summary as the only context -> the target turn.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from afm_trainer.data.parquet_io import InputError, read_table, write_rows  # noqa: E402
from afm_trainer.data.splits import summary_only, summary_prefix  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Split summarised samples into summary-prefix and summary-only sets.")
    parser.add_argument("--input_file", required=True)
    parser.add_argument("--output_dataset1", required=True, help="summary-prefix parquet")
    parser.add_argument("--output_dataset2", required=True, help="summary-only parquet")
    args = parser.parse_args(argv)
    try:
        table = read_table(args.input_file, "summary", "run add_summaries.py first")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = table.to_pylist()
    write_rows([summary_prefix(r) for r in rows], table.schema, args.output_dataset1)
    write_rows([summary_only(r) for r in rows], table.schema, args.output_dataset2)
    print(f"{len(rows)} samples -> {args.output_dataset1}, {args.output_dataset2}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
