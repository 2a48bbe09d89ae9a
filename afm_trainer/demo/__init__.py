"""The embedded defaults (what ``make demo``, ``make demo-rl``, ``make demo-dpo`` and
``make demo-self-improve`` run): examples built on the recipes, not part of them. With
no model and no data, a recipe hands its command line to the demo module of the same
name (``progressive``, ``grpo``, ``dpo``, ``self_improve``), which builds the demo world
and a tiny model (or takes the progressive demo's final model), sets the recipe's inputs
and runs the recipe itself. Their settings are config/NAME.yaml beside this file (copy
one, change it, and pass DEMO_CONFIG=path/to/it.yaml).
"""

import os

import yaml

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")
FINAL_SFT_PHASE = "phase3_summary_prefix"  # the progressive demo's last phase: the RL, DPO demos' start


def progressive_demo_model(sft_dir: str, dry_run: bool = False) -> str:
    """The final model of the progressive demo run in ``sft_dir`` (``make demo``). A dry
    run before that demo ran prints the path the real run will take (``global_step_LATEST``)."""
    from afm_trainer.checkpoints import latest_export
    from afm_trainer.recipes.common import RecipeError

    model, exists = latest_export(os.path.join(sft_dir, FINAL_SFT_PHASE))
    if not exists and not dry_run:
        raise RecipeError(
            f"no MODEL given and no complete checkpoint in {sft_dir}/{FINAL_SFT_PHASE} "
            "(run `make demo` first, or pass MODEL=... / SFT_DIR=...)"
        )
    return os.path.abspath(model)


def load_settings(name: str, path: str | None = None) -> dict:
    """The demo's settings: ``path`` if given, else config/NAME.yaml."""
    with open(path or os.path.join(CONFIG_DIR, f"{name}.yaml")) as f:
        return yaml.safe_load(f)
