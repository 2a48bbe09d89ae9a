#!/usr/bin/env python
"""Print the memory a recipe's run will need per rank, before launching it.

    python scripts/plan_memory.py --model MODEL_DIR_OR_CONFIG_JSON --recipe sft|dpo|distill|grpo \
        [--nproc N] [--nnodes K] [hydra overrides, e.g. data.max_token_len_per_gpu=4096 model.lora_rank=16 ...]

The model's shapes come from its HF config (a model folder, its config.json, or a published
shape's name such as qwen2.5-0.5b); batch sizes, token budgets, dtypes, LoRA and gradient
checkpointing from the recipe's Hydra config (afm_trainer/recipes/RECIPE/config/RECIPE.yaml)
composed with the overrides, exactly as the recipe passes them (``device=cpu|gpu`` picks
the device group; default: what torch sees). The table lists, per rank, each term in GiB
with its dtype, the phases of the run it is alive in (init, train, step; DPO's reference
pass; GRPO's rollout and log-prob passes) and how it was computed; the total is the
largest phase. The formulas: afm_trainer/models/memory_plan.py.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from afm_trainer.models.memory_plan import RECIPES, PlanError, format_plan, plan

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument(
        "--model", required=True, help="HF model folder, config.json, or a published shape (qwen2.5-0.5b)"
    )
    parser.add_argument("--recipe", required=True, choices=RECIPES)
    parser.add_argument("--nproc", type=int, default=1, help="ranks per node (default 1)")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes (default 1)")
    parser.add_argument(
        "--pairs", type=int, default=None, help="dpo: preference pairs (default: counted in data.train_files)"
    )
    parser.add_argument(
        "--topk", type=int, default=None, help="distill: the teacher's k (default: from the data, else 8)"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the recipe's config")
    args = parser.parse_args(argv)
    try:
        result = plan(
            args.model,
            args.recipe,
            nproc=args.nproc,
            nnodes=args.nnodes,
            overrides=args.overrides,
            pairs=args.pairs,
            topk=args.topk,
        )
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "by_key"}, indent=2, default=str))
    else:
        print(format_plan(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
