"""Prompts with rule rewards for verl's RL trainer, from the task suites.

    python data_preprocess/make_rl_data.py --out DIR [--suite algorithmic|qa|code|all|algorithmic,qa] \
        [--world WORLD_DIR] [--qa_file QA.jsonl|QA.json|QA.parquet] [--difficulties 1,2,3] [--n_train 1000] [--n_val 100]

Writes DIR/train.parquet and DIR/val.parquet in verl's RL format (afm_trainer/data/rl_data.py
says which columns), then DIR/split.report.json (each file's sha256 and rows). --n_train
and --n_val count rows per suite; --world is a demo world folder (python -m
afm_trainer.world.make_world): validation is then its held-out sets, and no training
prompt shows a held-out task. --qa_file takes the user's questions
instead of the world's: JSONL, a JSON array or parquet, of {"question", "answer"} (text
or a number), {"question", "answer": [aliases]} or FlashRAG's / Search-R1's
{"question", "golden_answers": [aliases]} records; each record becomes a row (every
alias kept: the reward takes the best of them) or a reject (DIR/rejects.jsonl: where it
was, the reason naming the field, the record). If none becomes a row, it is an error
(exit 1) and no parquet is written.

A Search-R1 RL parquet (scripts/data_process/nq_search.py's) needs no conversion: the
reward scores its rows (data_source nq, hotpotqa...; ground truth {"target": [aliases]})
as qa rows. Its rows name no agent loop, so give the GRPO recipe
actor_rollout_ref.rollout.agent.default_agent_loop=afm_tag_agent for them to search.
"""

import argparse
import json
import sys

from afm_trainer.data.parquet_io import InputError, fail
from afm_trainer.data.rl_data import make_rl_data
from afm_trainer.suites import SUITES, RLDataRequest
from afm_trainer.suites.base import SuiteInputError
from afm_trainer.suites.qa import HOPS
from afm_trainer.world.algorithmic import DIFFICULTIES


def _suites(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in SUITES and n != "all"]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"suites are {', '.join([*SUITES, 'all'])} (comma-separated), got {text!r}")
    return list(SUITES) if "all" in names else names


def _difficulties(text: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not values or not set(values) <= set(DIFFICULTIES):
        raise argparse.ArgumentTypeError(f"difficulties must be in {DIFFICULTIES[0]}..{DIFFICULTIES[-1]}, got {text!r}")
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Write verl RL parquet (prompts with rule rewards) for the task suites."
    )
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--suite", default=list(SUITES), type=_suites, help="algorithmic, qa, code or all; several: algorithmic,qa"
    )
    parser.add_argument("--world", default=None, help="a demo world folder: validation = its held-out sets")
    parser.add_argument(
        "--qa_file",
        default=None,
        help='JSONL, JSON array or parquet of {"question", "answer" or "golden_answers"}: the qa rows instead of the world\'s',
    )
    parser.add_argument("--difficulties", type=_difficulties, default=DIFFICULTIES, help="e.g. 1,2,3 (qa: hop counts)")
    parser.add_argument("--n_train", type=int, default=1000, help="training rows per suite (at most)")
    parser.add_argument("--n_val", type=int, default=100, help="validation rows per suite (at most)")
    args = parser.parse_args(argv)
    if args.n_train < 1 or args.n_val < 1:
        parser.error("--n_train and --n_val must be positive")
    wants_qa = "qa" in args.suite
    if args.qa_file and not wants_qa:
        parser.error(f"--qa_file makes qa rows, but --suite is {','.join(args.suite)}")
    if wants_qa and not args.qa_file and not set(args.difficulties) & set(HOPS):
        parser.error(f"qa questions have {HOPS} hops; --difficulties {args.difficulties} picks none")
    request = RLDataRequest(args.out, args.world, tuple(args.difficulties), args.n_train, args.n_val, args.qa_file)
    try:
        counts = make_rl_data(args.suite, request)
    except SuiteInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except InputError as exc:  # an output that is the --qa_file, a full disk
        return fail(exc)
    for split, by_source in counts.items():
        print(f"{args.out}/{split}.parquet: {sum(by_source.values())} rows", json.dumps(by_source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
