"""The GRPO recipe's embedded default (``make demo-rl``): RL from the progressive demo's
final model on the demo world's tasks, with the settings of config/grpo.yaml.

The RL data is written to ``OUT_DIR/data`` from the world that ``make demo`` built
(``SFT_DIR/embedded/world``): validation is its held-out set, and no training prompt
shows a held-out task. The world's corpus serves the search tool.
"""

from __future__ import annotations

import os

from afm_trainer.demo import load_settings
from afm_trainer.demo.progressive import embedded_paths
from afm_trainer.recipes.common import RecipeArgs


def embedded_default(args: RecipeArgs) -> tuple[RecipeArgs, bool]:
    """The recipe arguments of the demo, and whether its data exists (a dry run writes nothing)."""
    from afm_trainer.data.rl_data import make_rl_data
    from afm_trainer.suites import RLDataRequest

    settings = load_settings("grpo", args.get("DEMO_CONFIG"))
    data = settings["data"]
    folder = os.path.join(os.path.abspath(args.out_dir), "data")
    world = embedded_paths(args.get("SFT_DIR", "out/demo"))["world"]
    # Without `make demo`'s world the data comes from a world of its own, and no corpus;
    # a dry run shows the run after `make demo` (which the start model needs anyway).
    world = world if os.path.isdir(world) or args.dry_run else None
    train, val = os.path.join(folder, "train.parquet"), os.path.join(folder, "val.parquet")
    if not args.dry_run and not os.path.exists(val):
        request = RLDataRequest(folder, world, tuple(data["difficulties"]), data["n_train"], data["n_val"])
        make_rl_data(data["suites"], request)
    keys = {"TRAIN_FILES": train, "VAL_FILES": val}
    corpus = os.path.join(world, "corpus.jsonl") if world else None
    if corpus and (os.path.isfile(corpus) or args.dry_run) and not args.get("SEARCH_URL"):
        keys["CORPUS"] = corpus
    embedded = RecipeArgs(args.nproc, args.out_dir, {**keys, **args.keys}, [*settings["overrides"], *args.overrides])
    return embedded, os.path.exists(val)
