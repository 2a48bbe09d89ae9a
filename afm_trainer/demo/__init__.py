"""The embedded defaults (what ``make demo`` and ``make demo-rl`` run): an example built
on the recipes, not part of them. With no model and no data, a recipe hands its command
line to ``progressive.run_embedded_default`` or ``grpo.embedded_default``, which build
the demo world and a tiny model, set the recipe's inputs and run the recipe itself.
Their settings are config/progressive.yaml and config/grpo.yaml beside this file (copy
one, change it, and pass DEMO_CONFIG=path/to/it.yaml).
"""

import os

import yaml

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")


def load_settings(name: str, path: str | None = None) -> dict:
    """The demo's settings: ``path`` if given, else config/NAME.yaml."""
    with open(path or os.path.join(CONFIG_DIR, f"{name}.yaml")) as f:
        return yaml.safe_load(f)
