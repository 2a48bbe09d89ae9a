"""Preference training (DPO, IPO, Cal-DPO, Dr-DPO, schedules) on verl's FSDP2 engine.

    bash recipes/train_dpo.sh NPROC OUT_DIR MODEL=... TRAIN_FILES=pairs.parquet [VAL_FILES=...] [KEY=VALUE ...] [hydra.overrides ...]
    python -m afm_trainer.recipes.dpo.main NPROC OUT_DIR ...        (the same)

Runs ``torchrun -m afm_trainer.recipes.dpo.trainer`` with ``config/dpo.yaml`` beside this
file, exactly as the SFT recipe runs verl's SFT trainer: the same keys, devices, LoRA,
multi-node, DRY_RUN, checkpoints (``OUT_DIR/global_step_N/`` with ``huggingface/``) and
resume. Pair data: parquet with ``prompt``, ``chosen``, ``rejected`` (chat messages;
``data_preprocess/make_pairs.py``, or ``convert_traces.py --format teacher_cot``'s
``OUT.pairs.parquet``). Before anything starts, every pair is tokenized with the model's
chat template, and pairs longer than ``data.max_length`` (or, with dynamic batching, a
pair that does not fit ``data.max_token_len_per_gpu``) are reported in one error line
rather than cut.
"""

from __future__ import annotations

from pathlib import Path

from afm_trainer.data.pair_dataset import PAIR_COLUMNS, pair_conversations, pair_tools, read_pairs
from afm_trainer.recipes.common import RecipeArgs, RecipeError, data_files, recipe_main, run
from afm_trainer.recipes.dpo.reference import check_reference_model
from afm_trainer.recipes.dpo.report import write_report
from afm_trainer.recipes.sft.main import KEYS as SFT_KEYS
from afm_trainer.recipes.sft.main import build_sft

CONFIG_DIR = Path(__file__).resolve().parent / "config"

KEYS = {
    **SFT_KEYS,
    "TRAIN_FILES": "preference pairs: parquet with prompt/chosen/rejected (files, folders of shards or globs)",
    "VAL_FILES": "preference pairs for validation, as TRAIN_FILES (optional)",
    "CONFIG": f"Hydra config name in {CONFIG_DIR} (default: dpo)",
    "SFT_DIR": "the progressive demo's OUT_DIR, for the embedded default (default out/demo)",
    "DEMO_CONFIG": "settings of the embedded default (default afm_trainer/demo/config/dpo.yaml)",
}


def composed_config(args: RecipeArgs):
    """The trainer's config as it will see it: CONFIG composed with this command line's overrides."""
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            return compose(config_name=args.get("CONFIG", "dpo"), overrides=["device=cpu", *args.overrides])
    except Exception as exc:  # Hydra raises several types for a bad override
        raise RecipeError(f"the configuration does not compose with these overrides: {exc}") from None


def pair_limits(config) -> tuple[int, int | None]:
    """(data.max_length, the token budget of a micro-batch with dynamic batching, else None)."""
    data = config.data
    return int(data.max_length), int(data.max_token_len_per_gpu) if data.use_dynamic_bsz else None


def check_pair_lengths(tokenizer, files: list[str], what: str, max_length: int, max_tokens: int | None) -> None:
    """Refuse pairs the trainer would have to cut or could not place, naming them."""
    too_long = []
    try:
        pairs = read_pairs(files)
    except ValueError as exc:
        raise RecipeError(f"{what}: {exc}") from None
    for pair in pairs:
        tools = pair_tools(pair)  # rendered into the prompt by the template, so counted
        lengths = [
            len(tokenizer.apply_chat_template(c, tools=tools, tokenize=True)["input_ids"])
            for c in pair_conversations(pair)
        ]
        if max(lengths) > max_length or (max_tokens and sum(lengths) > max_tokens):
            too_long.append(f"{pair['pair_id']}: {lengths[0]}+{lengths[1]} tokens")
    if too_long:
        limit = f"data.max_length={max_length}" + (
            f", data.max_token_len_per_gpu={max_tokens} a pair" if max_tokens else ""
        )
        raise RecipeError(
            f"{len(too_long)} of {len(pairs)} {what} pairs exceed {limit} ({'; '.join(too_long[:3])}"
            f"{'; ...' if len(too_long) > 3 else ''}): raise the limit or drop them"
        )


def train_dpo(args: RecipeArgs, inputs_exist: bool = True, tag: str = "dpo", extra_report=None) -> int:
    """Check the pairs, train, and write OUT_DIR/report.md; ``inputs_exist=False`` (dry
    runs of chains and demos) skips the checks of a model and pairs not made yet.
    ``extra_report(config)`` returns more report lines (the demo's evaluation)."""
    launch = build_sft(
        args, inputs_exist, trainer="afm_trainer.recipes.dpo.trainer", config_dir=CONFIG_DIR, columns=PAIR_COLUMNS
    )
    config = None
    if inputs_exist:
        from transformers import AutoTokenizer

        if problem := check_reference_model(args.out_dir, args.get("MODEL")):
            raise RecipeError(problem)
        config = composed_config(args)
        limits = pair_limits(config)
        tokenizer = AutoTokenizer.from_pretrained(args.get("MODEL"))
        for key in ("TRAIN_FILES", "VAL_FILES"):
            if files := data_files(args.get(key)):
                check_pair_lengths(tokenizer, files, key, *limits)
    code = run(launch, tag, args.dry_run)
    if code != 0 or args.dry_run:
        return code
    write_report(args.out_dir, extra_report(config) if extra_report else [])
    return 0


def dpo(args: RecipeArgs) -> int:
    if args.get("MODEL") or args.get("TRAIN_FILES"):
        return train_dpo(args)
    # the embedded default (make demo-dpo)
    from afm_trainer.demo.dpo import embedded_default, evaluation_report

    args, demo = embedded_default(args)
    return train_dpo(
        args, inputs_exist=not args.dry_run, extra_report=lambda config: evaluation_report(args, demo, config)
    )


def main(argv: list[str] | None = None) -> int:
    return recipe_main(dpo, argv, KEYS)


if __name__ == "__main__":
    raise SystemExit(main())
