"""Seed 004's training sets from teacher chain-of-thought traces.

    python data_preprocess/make_self_improve_data.py --input_file traces.jsonl --output_dir DATA_DIR \
        [--min_score 1] [--balance {none,downsample,upsample}] [--val_ratio 0.1] [--seed 42] [--tokenizer PATH]

Input: teacher_cot records ({"question", "answer", "student_draft", "teacher_output",
"score"}; afm_trainer/traces/formats.py). Writes DATA_DIR/track_a (question -> answer),
DATA_DIR/track_b (question + student draft -> teacher reasoning -> answer) and
DATA_DIR/pairs (the teacher's turn over each wrong draft), each {train,val}.parquet, the
DATA_DIR of recipes/self_improve.sh. --min_score drops the records whose teacher
disagreed with the answer from track B and the pairs; --balance then evens track B's
labels. Rejected records (with their line and reason) and the reports are in DATA_DIR/work/.
"""

import argparse
import json
import os
import sys

from afm_trainer.data.parquet_io import InputError, fail, refuse_overwriting_inputs, write_json
from afm_trainer.data.self_improve import write_self_improve_data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_file", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--min_score", type=float, default=None, help="drop track-B records scoring below this")
    parser.add_argument("--balance", default="none", choices=["none", "downsample", "upsample"])
    parser.add_argument("--val_ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer for token-length percentiles")
    args = parser.parse_args(argv)
    report_file = os.path.join(args.output_dir, "report.json")
    try:
        folders = [os.path.join(args.output_dir, name) for name in ("work", "track_a", "track_b", "pairs")]
        refuse_overwriting_inputs([args.input_file], [report_file], output_folders=folders)
        report = write_self_improve_data(
            args.input_file,
            args.output_dir,
            min_score=args.min_score,
            balance=args.balance,
            val_ratio=args.val_ratio,
            seed=args.seed,
            tokenizer=args.tokenizer,
        )
    except InputError as exc:
        return fail(exc)
    for track in ("track_a", "track_b"):
        r = report[f"convert {track}"]
        labels = r["label_balance"]
        print(
            f"{track}: {r['records_in']} records in, {r['records_converted']} converted, "
            f"{r['records_rejected']} rejected ({json.dumps(r['rejected_by_reason'])}); labels before filtering "
            f"{labels['before_filtering']}, labels after filtering {labels['after_filtering']}"
        )
    print(f"preference pairs: {report['convert track_b']['preference_pairs']}")
    for name in ("track_a", "track_b", "pairs"):
        split = report[f"split {name}"]
        print(f"{os.path.join(args.output_dir, name)}: {split['train_rows']} train, {split['val_rows']} val rows")
    try:
        write_json(report, report_file)
    except InputError as exc:
        return fail(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
