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


def load_settings(name: str, path: str | None = None) -> dict:
    """The demo's settings: ``path`` if given, else config/NAME.yaml."""
    with open(path or os.path.join(CONFIG_DIR, f"{name}.yaml")) as f:
        return yaml.safe_load(f)
