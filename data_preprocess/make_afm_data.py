"""Seed 001's training sets from agent chains: the AFM's and one per agent role.

    python data_preprocess/make_afm_data.py --input_file chains.jsonl --output_dir DATA_DIR \
        [--min_score 0.5] [--val_ratio 0.1] [--seed 42] [--tokenizer PATH]

Input: agent_chain records ({"task", "trajectory": [{"agent": "Planner", "output"}, ...],
"score"}; afm_trainer/traces/formats.py). Writes DATA_DIR/afm (the whole chain as one
assistant turn, role tokens marking each agent), DATA_DIR/planner, DATA_DIR/coder and
DATA_DIR/reviewer (that agent's turns trained, earlier turns as context), each
{train,val}.parquet: the DATA_DIR of recipes/train_afm.sh. --min_score drops chains
scoring below it (the teacher's wrong ones) from all four. Rejected records (with their
line and reason) and the reports are in DATA_DIR/work/.
"""

import argparse
import json
import os
import sys

from afm_trainer.data.agent_chains import SETS, write_chain_data
from afm_trainer.data.parquet_io import InputError, fail, refuse_overwriting_inputs, write_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_file", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--min_score", type=float, default=None, help="drop chains scoring below this")
    parser.add_argument("--val_ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer for token-length percentiles")
    args = parser.parse_args(argv)
    report_file = os.path.join(args.output_dir, "report.json")
    try:
        folders = [os.path.join(args.output_dir, name) for name in ("work", *SETS)]
        refuse_overwriting_inputs([args.input_file], [report_file], output_folders=folders)
        report = write_chain_data(
            args.input_file,
            args.output_dir,
            min_score=args.min_score,
            val_ratio=args.val_ratio,
            seed=args.seed,
            tokenizer=args.tokenizer,
        )
    except InputError as exc:
        return fail(exc)
    for name in SETS:
        r, split = report[f"convert {name}"], report[f"split {name}"]
        print(
            f"{os.path.join(args.output_dir, name)}: {r['records_in']} chains in, {r['records_converted']} converted, "
            f"{r['records_rejected']} rejected ({json.dumps(r['rejected_by_reason'])}); "
            f"{split['train_rows']} train, {split['val_rows']} val rows"
        )
    try:
        write_json(report, report_file)
    except InputError as exc:
        return fail(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
