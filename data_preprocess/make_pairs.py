"""Make preference-pair parquet for preference training (DPO) from your own pair file.

    python data_preprocess/make_pairs.py --input_file PAIRS.jsonl --output_file PAIRS.parquet

Input: JSONL, a JSON array or parquet, one {prompt, chosen, rejected} record per pair
(rules in afm_trainer/data/pairs.py). Writes PAIRS.parquet, PAIRS.parquet.rejects.jsonl and
PAIRS.parquet.report.json. Rejected records do not fail the run (exit 0, counted) unless
none is left (exit 1, with the reasons counted); an unreadable input file does (exit 1,
one error line).
"""

import argparse
import sys

from afm_trainer.data.pairs import convert_pairs
from afm_trainer.data.parquet_io import InputError

DESCRIPTION = """\
Make preference-pair parquet (TRL's conversational format plus pair_id, source, weight).

Input: JSONL, a JSON array or parquet, one record per pair:
  prompt    a string (one user message) or a list of {role, content} messages
            (system/user/assistant/tool), not ending with the assistant's
  chosen    the preferred response: a string or a list of assistant messages
  rejected  the dispreferred response, the same way; must differ from chosen
  weight    optional, a number > 0 (default 1.0)
  pair_id   optional, unique in the file (default: the record's line or index)
  source    optional (default "user")
No text may hold a reserved chat token (<|im_end|>...), and the trace tags of assistant
messages (<think>...) must be well formed. Records breaking a rule are written with the
reason to OUTPUT.rejects.jsonl; OUTPUT.report.json counts them.
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Where the pairs come from: one mode per option of this group (an on-policy mode,
    # sampling from a checkpoint, will be another).
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input_file", help="your pair file: JSONL, a JSON array or parquet")
    parser.add_argument("--output_file", required=True, help="the parquet to write")
    args = parser.parse_args(argv)
    try:
        report = convert_pairs(args.input_file, args.output_file)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{report['records_in']} records in: {report['records_converted']} pairs written to {args.output_file}, "
        f"{report['records_rejected']} rejected (see {args.output_file}.rejects.jsonl); "
        f"report: {args.output_file}.report.json"
    )
    for reason, count in report["rejected_by_reason"].items():
        print(f"  rejected {count}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
