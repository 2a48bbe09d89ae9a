"""Convert agent trajectories to verl SFT parquet.

    python data_preprocess/convert_traces.py --format FMT --mode {multiturn,stepwise,one_call} \
        --input_file IN --output_file OUT.parquet [--tokenizer PATH] [--min_score X] \
        [--balance {none,downsample,upsample}] [--dedup] [--seed 0] [--role coder] \
        [--agent_roles "Code Reviewer=reviewer"] [--reasoning {train,drop}] \
        [--untrained_tags observation,information,tool_response]
    python data_preprocess/convert_traces.py --dataset_info data/dataset_info.json --dataset NAME \
        --output_file OUT.parquet [...]

FMT: auto (told from the file's first record; printed), search_agent, agent_chain,
sharegpt, alpaca, messages, rollout_text, teacher_cot (afm_trainer/traces/registry.py lists
them and what each trains). --dataset_info/--dataset: a dataset registered in
LLaMA-Factory's dataset_info.json, with its file, format, column and tag names.
Input: JSONL, a JSON array or parquet (by extension and first character), a folder saved
by the datasets library (save_to_disk), or a quoted glob ('data/*.jsonl'). Writes
OUT.parquet (`messages` with a per-message `train` flag), OUT.parquet.rejects.jsonl and
OUT.parquet.report.json (last, naming each file's sha256 and rows; an earlier run's files
are replaced whole). An output that is an input (the same file by any name) is refused
(exit 2) before anything is written. Agent chains: --mode one_call trains one model on
every agent's turns as one message (the whole chain in one call); --role trains one agent's turns only
(one model of a multi-agent system). Rejected records do not fail the run (exit 0, counted) unless none is
left (exit 1, with the reasons counted); an unreadable
input file does (exit 1, one error line).
"""

import argparse
import sys

from afm_trainer.data.convert import convert
from afm_trainer.data.parquet_io import InputError, fail
from afm_trainer.models.special_tokens import ROLE_TOKENS
from afm_trainer.traces.chat import REASONING, UNTRAINED_TAGS
from afm_trainer.traces.dataset_info import DatasetInfoError, load_entry
from afm_trainer.traces.formats import MODES
from afm_trainer.traces.registry import FORMATS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Convert agent trajectories to verl SFT parquet.")
    parser.add_argument("--format", default=None, choices=["auto", *sorted(FORMATS)])
    parser.add_argument("--mode", default="multiturn", choices=MODES)
    parser.add_argument(
        "--input_file", default=None, help="JSONL, JSON array, parquet, a save_to_disk folder, or a glob of files"
    )
    parser.add_argument(
        "--dataset_info",
        default=None,
        help="LLaMA-Factory's dataset_info.json: with --dataset, its file, format, columns and tags",
    )
    parser.add_argument("--dataset", default=None, help="the dataset's name in --dataset_info")
    parser.add_argument("--output_file", required=True)
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer for token-length percentiles")
    parser.add_argument("--min_score", type=float, default=None, help="reject trajectories scoring below this")
    parser.add_argument("--balance", default="none", choices=["none", "downsample", "upsample"])
    parser.add_argument("--dedup", action="store_true", help="reject exact duplicate trajectories")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--role",
        choices=[t[2:-2] for t in ROLE_TOKENS],
        default=None,
        help="agent_chain: train only this agent's turns (the others are context)",
    )
    parser.add_argument(
        "--agent_roles",
        default=None,
        help='agent_chain: other agent names mapped onto the roles, e.g. "Code Reviewer=reviewer,Architect=planner"',
    )
    parser.add_argument(
        "--reasoning",
        choices=REASONING,
        default="train",
        help="chat formats: train an assistant's reasoning_content as <think>...</think>, or drop it",
    )
    parser.add_argument(
        "--untrained_tags",
        default=",".join(UNTRAINED_TAGS),
        help="chat formats: tags of tool output written inside an assistant turn, kept as context, never "
        "trained (comma-separated; default %(default)s)",
    )
    args = parser.parse_args(argv)
    rename = None
    if (args.dataset_info is None) != (args.dataset is None):
        parser.error("--dataset_info and --dataset go together")
    if args.dataset_info:
        try:
            entry = load_entry(args.dataset_info, args.dataset)
        except DatasetInfoError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if args.format not in (None, "auto", entry.format):
            parser.error(f"--format {args.format}, but dataset {args.dataset!r} is {entry.format}")
        args.format, rename = entry.format, entry.rename
        args.input_file = args.input_file or entry.file
    if args.format is None or args.input_file is None:
        parser.error("give --format and --input_file, or --dataset_info and --dataset")
    agent_roles = None
    if args.agent_roles:
        pairs = [item.split("=", 1) for item in args.agent_roles.split(",") if item.strip()]
        if any(len(pair) != 2 or not pair[0].strip() or not pair[1].strip() for pair in pairs):
            parser.error(f'--agent_roles takes NAME=ROLE pairs separated by commas, got "{args.agent_roles}"')
        agent_roles = {name.strip(): role.strip() for name, role in pairs}
    try:
        report = convert(
            args.input_file,
            args.output_file,
            args.format,
            args.mode,
            args.tokenizer,
            args.min_score,
            args.balance,
            args.dedup,
            args.seed,
            role=f"<|{args.role}|>" if args.role else None,
            reasoning=args.reasoning,
            agent_roles=agent_roles,
            rename=rename,
            untrained_tags=tuple(tag.strip() for tag in args.untrained_tags.split(",") if tag.strip()),
        )
    except InputError as exc:
        return fail(exc)
    if report["format_detected_at"]:
        print(f"format: {report['format']} (told from {report['format_detected_at']} of {args.input_file})")
    print(
        f"{report['records_in']} records in: {report['records_converted']} converted into "
        f"{report['samples_out']} samples, {report['records_rejected']} rejected "
        f"(see {args.output_file}.rejects.jsonl); report: {args.output_file}.report.json"
    )
    for reason, count in report["rejected_by_reason"].items():
        print(f"  rejected {count}: {reason}")
    if report["samples_with_untrained_assistant_turns"]:
        print(
            f"note: {report['samples_with_untrained_assistant_turns']} samples hold assistant text that is context, "
            f"not a target, so their column is `{report['messages_column']}`: verl's own MultiTurnSFTDataset, "
            "which would train every assistant turn whole, refuses the file; afm-trainer's recipes read it, and "
            "so does verl's trainer with data.custom_cls.path=pkg://afm_trainer.data.sft_dataset "
            "data.custom_cls.name=AgentSFTDataset"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
