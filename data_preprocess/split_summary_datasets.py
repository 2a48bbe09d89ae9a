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

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from afm_trainer.data.splits import summary_only, summary_prefix  # noqa: E402


def write(rows, schema, path):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path + ".tmp")
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Split summarised samples into summary-prefix and summary-only sets.")
    parser.add_argument("--input_file", required=True)
    parser.add_argument("--output_dataset1", required=True, help="summary-prefix parquet")
    parser.add_argument("--output_dataset2", required=True, help="summary-only parquet")
    args = parser.parse_args(argv)
    try:
        table = pq.read_table(args.input_file)
    except Exception as exc:
        print(f"error: cannot read {args.input_file}: {exc}", file=sys.stderr)
        return 1
    if "summary" not in table.column_names:
        print(f"error: {args.input_file} has no `summary` column (run add_summaries.py first)", file=sys.stderr)
        return 1
    rows = table.to_pylist()
    write([summary_prefix(r) for r in rows], table.schema, args.output_dataset1)
    write([summary_only(r) for r in rows], table.schema, args.output_dataset2)
    print(f"{len(rows)} samples -> {args.output_dataset1}, {args.output_dataset2}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
