"""More agent chains for the demo world: each task again with other inputs, solved by the teacher.

    python data_preprocess/augment_chains.py --input_file chains.jsonl --output_file more.jsonl \
        [--copies 1] [--exclude WORLD/heldout/algorithmic.jsonl] [--seed 0]

Writes the input records and, after them, ``--copies`` new chains per record (ids
``SOURCE#augN``, with ``augmented_from`` and ``augmentation``): the input of
make_afm_data.py. Records that could not be augmented are listed with the reason in
OUTPUT.not_augmented.jsonl. See afm_trainer/world/augment.py.
"""

import argparse
import json
import sys

from afm_trainer.data.parquet_io import InputError, fail, refuse_overwriting_inputs
from afm_trainer.world.augment import augment_chains


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_file", required=True)
    parser.add_argument("--output_file", required=True)
    parser.add_argument("--copies", type=int, default=1, help="new chains per input chain")
    parser.add_argument("--exclude", default=None, help="JSONL of tasks (a `prompt` each) never to generate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        written = [args.output_file, args.output_file + ".not_augmented.jsonl"]
        refuse_overwriting_inputs([args.input_file, args.exclude], written)
        report = augment_chains(args.input_file, args.output_file, args.copies, args.seed, args.exclude)
    except InputError as exc:
        return fail(exc)
    print(
        f"{args.output_file}: {report['records_in']} records in, {report['generated']} generated; "
        f"{report['not_augmented']} not augmented {json.dumps(report['not_augmented_by_reason'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
