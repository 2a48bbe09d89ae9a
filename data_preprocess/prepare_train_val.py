"""Split a converted parquet into train/val by trajectory, stratified by label.

    python data_preprocess/prepare_train_val.py --input_file IN.parquet --output_dir DIR \
        [--val_ratio 0.1] [--seed 42] [--shards N]

Writes DIR/train.parquet and DIR/val.parquet, or with --shards N,
DIR/train-0000K-of-0000N.parquet (and val likewise): the recipes take DIR, the folder,
or the shards' names. No trajectory has samples in both sets, nor does a source and its
copies (ID#copyN, ID#augN). The split files an earlier run left in DIR are replaced, and
DIR/split.report.json, written last, names each file's sha256 and rows.
"""

import argparse
import sys

from afm_trainer.data.parquet_io import InputError, fail
from afm_trainer.data.splits import prepare_train_val


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
        c = prepare_train_val(args.input_file, args.output_dir, args.val_ratio, args.seed, args.shards)
    except InputError as exc:
        return fail(exc)
    print(
        f"{args.output_dir}: train {c['train_samples']} samples ({c['train_trajectories']} trajectories), "
        f"val {c['val_samples']} samples ({c['val_trajectories']} trajectories)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
