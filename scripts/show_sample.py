#!/usr/bin/env python
"""Print one converted training sample as the model sees it, trained tokens marked.

    python scripts/show_sample.py PARQUET --tokenizer MODEL_DIR [--row N] [--plain]

The sample goes through afm-trainer's SFT dataset (AgentSFTDataset) exactly as in
training: the model's chat template applied message by message, truncation to
--max_length, and the loss mask. The text is printed with the tokens whose loss-mask
bit is 1 (the ones training learns to predict) in bold green on a terminal, or between
[[ and ]] with --plain or when the output is not a terminal (pipes, files). A summary
(tokens, trained tokens) goes to stderr.

Check this first when a loss mask looks wrong: in a stepwise sample only the last
assistant turn and its end-of-turn token should be marked; tool output never.
"""

import argparse
import os
import sys

from afm_trainer.data.show_sample import load_dataset, render_ansi, render_plain, sample_spans, summary


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("parquet", help="a converted parquet file (convert_traces.py output, a `messages` column)")
    parser.add_argument(
        "--tokenizer", required=True, help="model folder (or hub id) whose tokenizer and chat template to use"
    )
    parser.add_argument("--row", type=int, default=0, help="row to show (default 0)")
    parser.add_argument("--plain", action="store_true", help="mark trained text with [[...]] instead of colour")
    parser.add_argument(
        "--max_length",
        type=int,
        default=2048,
        help="data.max_length of the training run (default: the SFT recipe's 2048)",
    )
    parser.add_argument(
        "--truncation",
        default="right",
        choices=["right", "left", "error"],
        help="data.truncation of the training run (default right, as the SFT recipe)",
    )
    parser.add_argument(
        "--messages_key",
        default="messages",
        help="data.messages_key (default: messages, or messages_with_untrained_turns in a file that has it)",
    )
    return parser.parse_args(argv)


def use_colour(plain: bool) -> bool:
    # NO_COLOR is the common convention for turning colour off everywhere.
    return not plain and sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def main(argv=None) -> int:
    args = parse_args(argv)
    if not os.path.isfile(args.parquet):
        print(f"error: file not found: {args.parquet}", file=sys.stderr)
        return 2
    dataset = load_dataset(args.parquet, args.tokenizer, args.max_length, args.truncation, args.messages_key)
    if not 0 <= args.row < len(dataset):
        print(f"error: --row {args.row} is out of range: {args.parquet} has {len(dataset)} rows", file=sys.stderr)
        return 2
    spans = sample_spans(dataset, args.row)
    print(f"row {args.row} of {len(dataset)}: {summary(spans)}", file=sys.stderr)
    text = render_ansi(spans) if use_colour(args.plain) else render_plain(spans)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
