"""Split a converted parquet into train/val by trajectory, stratified by label.

    python data_preprocess/prepare_train_val.py --input_file IN.parquet --output_dir DIR \
        [--val_ratio 0.1] [--seed 42] [--shards N]

Writes DIR/train.parquet and DIR/val.parquet, or with --shards N,
DIR/train-0000K-of-0000N.parquet (and val likewise), all readable by verl.
No trajectory has samples in both sets.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from afm_trainer.data.parquet_io import InputError, read_table, write_rows  # noqa: E402
from afm_trainer.data.splits import split_by_trajectory  # noqa: E402


def write_split(rows, schema, out_dir, name, shards):
    paths = []
    if shards <= 1:
        parts = [(f"{name}.parquet", rows)]
    else:
        parts = [(f"{name}-{k:05d}-of-{shards:05d}.parquet", rows[k::shards]) for k in range(shards)]
    for filename, part in parts:
        path = os.path.join(out_dir, filename)
        write_rows(part, schema, path)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train/val split by trajectory.")
    parser.add_argument("--input_file", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--val_ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--shards", type=int, default=1)
    args = parser.parse_args(argv)
    if not 0 <= args.val_ratio < 1:
        print(f"error: --val_ratio must be in [0, 1), got {args.val_ratio}", file=sys.stderr)
        return 1
    try:
        table = read_table(args.input_file, "trajectory_id", "convert it with convert_traces.py")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    train, val = split_by_trajectory(table.to_pylist(), args.val_ratio, args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    write_split(train, table.schema, args.output_dir, "train", args.shards)
    write_split(val, table.schema, args.output_dir, "val", args.shards)
    n_train, n_val = len({r["trajectory_id"] for r in train}), len({r["trajectory_id"] for r in val})
    print(f"{args.output_dir}: train {len(train)} samples ({n_train} trajectories), val {len(val)} samples ({n_val} trajectories)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
