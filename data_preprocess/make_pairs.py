"""Make preference-pair parquet for preference training (DPO): from your own pair file,
or on-policy, from a checkpoint's sampled answers scored by the task's reward.

    python data_preprocess/make_pairs.py --input_file PAIRS.jsonl --output_file PAIRS.parquet [--format auto]
    python data_preprocess/make_pairs.py --from_checkpoint CKPT --rl_data train.parquet \
        --output_file PAIRS.parquet [--samples 8] [--temperature 1.0] [--pairs_per_prompt 2]

Input: JSONL, a JSON array or parquet, one pair per record: TRL's preference formats,
LLaMA-Factory's ShareGPT or Alpaca preference formats, agent trajectories with tool turns
(rules in afm_trainer/data/pairs.py). Writes PAIRS.parquet, PAIRS.parquet.rejects.jsonl and
PAIRS.parquet.report.json. Rejected records do not fail the run (exit 0, counted) unless
none is left (exit 1, with the reasons counted); an unreadable input file, or one of no
known format, does (exit 1, one error line).
"""

import argparse
import sys

from afm_trainer.data.pairs import CHOSEN_FORMATS, convert_pairs
from afm_trainer.data.parquet_io import InputError, fail

DESCRIPTION = """\
Make preference-pair parquet (TRL's conversational format plus pair_id, source, weight).

Input (--input_file): JSONL, a JSON array or parquet, one pair per record, in a format
--format names or, with auto (the default), told from the file's first record (printed):
  pairs     TRL's preference format:
              prompt    a string (one user message) or a list of {role, content}
                        messages (system/user/assistant/tool), not ending with the
                        assistant's
              chosen    the preferred response: a string or a list of assistant messages,
                        with tool messages between them in an agent's response
              rejected  the dispreferred response, the same way; must differ from chosen
            or, without prompt (implicit prompt), chosen and rejected each the whole
            conversation: the prompt is what both start with (TRL's rule). An assistant
            message may carry OpenAI tool_calls; tools: the function schemas.
  sharegpt  LLaMA-Factory: conversations of {from, value} turns (human, gpt,
            function_call, observation), chosen and rejected a {from: gpt, value} turn;
            optional system and tools
  alpaca    LLaMA-Factory: instruction, input (optional; joined to the instruction with a
            newline), chosen and rejected strings; optional system and history
Every format takes the optional weight (a number > 0, default 1.0), pair_id (unique in
the file; default: the record's line or index) and source (default "user").
KTO data (one response with a true/false label or kto_tag, no rejected response) is not
a pair: every such record is refused with that reason.
Only the assistant's turns of a response are scored in preference training; tool
results are context, never scored: tool turns, and tool output written inside an
assistant turn (<information>, <observation>, <tool_response>). No text may hold a reserved chat token (<|im_end|>...),
and the trace tags of assistant messages (<think>...) must be well formed. Records
breaking a rule are written with the reason to OUTPUT.rejects.jsonl; OUTPUT.report.json
counts them.

On-policy (--from_checkpoint): k answers per prompt of an RL parquet (make_rl_data.py) are
sampled from the checkpoint and scored by the prompt's suite, as the RL reward scores
them; a right answer (every test passed) is paired with a wrong one. Prompts whose
answers are all right or all wrong give no pair: they are listed, with their counts,
in OUTPUT.rejects.jsonl, and OUTPUT.report.json counts every prompt's outcome.
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Where the pairs come from: one mode per option of this group.
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input_file", help="your pair file: JSONL, a JSON array or parquet")
    parser.add_argument(
        "--format", default="auto", choices=["auto", *CHOSEN_FORMATS], help="the input file's format (default: auto)"
    )
    source.add_argument("--from_checkpoint", help="an HF model folder to sample answers from (on-policy pairs)")
    parser.add_argument("--output_file", required=True, help="the parquet to write")
    on_policy = parser.add_argument_group("on-policy pairs (--from_checkpoint)")
    on_policy.add_argument("--rl_data", help="RL parquet whose prompts are answered (make_rl_data.py)")
    on_policy.add_argument("--samples", type=int, default=8, help="answers sampled per prompt")
    on_policy.add_argument("--temperature", type=float, default=1.0)
    on_policy.add_argument("--pairs_per_prompt", type=int, default=2, help="at most this many pairs per prompt")
    on_policy.add_argument("--max_prompts", type=int, default=None, help="use the first N prompts only")
    on_policy.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.from_checkpoint:
            return on_policy_pairs(args)
        report = convert_pairs(args.input_file, args.output_file, args.format, on_detected=print_format)
    except InputError as exc:
        return fail(exc)
    print(
        f"{report['records_in']} records in: {report['records_converted']} pairs written to {args.output_file}, "
        f"{report['records_rejected']} rejected (see {args.output_file}.rejects.jsonl); "
        f"report: {args.output_file}.report.json"
    )
    for reason, count in report["rejected_by_reason"].items():
        print(f"  rejected {count}: {reason}")
    return 0


def print_format(fmt, location: str) -> None:
    """What --format auto chose, printed as soon as it is chosen (also when nothing converts)."""
    print(f"format: {fmt.name} (told from {location}): {fmt.described}", flush=True)


def on_policy_pairs(args) -> int:
    from afm_trainer.data.onpolicy_pairs import make_onpolicy_pairs

    if not args.rl_data:
        raise InputError("--from_checkpoint needs --rl_data (an RL parquet from make_rl_data.py)")
    report = make_onpolicy_pairs(
        args.from_checkpoint,
        args.rl_data,
        args.output_file,
        samples=args.samples,
        temperature=args.temperature,
        pairs_per_prompt=args.pairs_per_prompt,
        max_prompts=args.max_prompts,
        seed=args.seed,
    )
    outcomes = ", ".join(f"{count} {outcome}" for outcome, count in report["prompts_by_outcome"].items())
    print(
        f"{report['prompts']} prompts x {report['samples_per_prompt']} answers "
        f"({report['sampled_accuracy']:.1%} right): {outcomes}; {report['pairs']} pairs written to "
        f"{args.output_file} (prompts without a pair: {args.output_file}.rejects.jsonl)"
    )
    if report["answers_with_reserved_token"]:
        print(
            f"{report['answers_with_reserved_token']} sampled answers held a reserved chat token: not used as pair text"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
