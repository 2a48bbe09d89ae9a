"""Add a teacher's top-k token distribution to SFT data, for distillation.

    python data_preprocess/add_teacher_topk.py --input_file train.parquet --output_file OUT.parquet \
        --teacher TEACHER_HF_DIR [--k 8] [--temperature 1.0] [--max_length 2048]

Every row is tokenized as the SFT recipe tokenizes it (the teacher's tokenizer: the
student must share it), the teacher runs over it once, and its k most likely next tokens
and their log-probs at every position are stored with the row, with the teacher's
identity, k and the temperature (afm_trainer/data/distill_dataset.py). OUT.parquet is
the TRAIN_FILES of recipes/train_distill.sh.
"""

import argparse
import json
import sys

from afm_trainer.data.distill_dataset import add_teacher_topk
from afm_trainer.data.parquet_io import InputError, fail, refuse_overwriting_inputs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_file", required=True)
    parser.add_argument("--output_file", required=True)
    parser.add_argument("--teacher", required=True, help="the teacher's HF model folder")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max_length", type=int, default=2048, help="the trainer's data.max_length")
    args = parser.parse_args(argv)
    try:
        refuse_overwriting_inputs([args.input_file, args.teacher], [args.output_file])
        report = add_teacher_topk(
            args.input_file, args.output_file, args.teacher, args.k, args.temperature, args.max_length
        )
    except InputError as exc:
        return fail(exc)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
