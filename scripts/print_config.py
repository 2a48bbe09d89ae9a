#!/usr/bin/env python
"""Print the configuration verl will run for a recipe command, resolved, as YAML.

    python scripts/print_config.py RECIPE NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]
    DRY_RUN=1 bash examples/gpu/SCRIPT.sh ... | python scripts/print_config.py -

RECIPE is sft, progressive, self_improve or grpo (a script in recipes/) or the path of a recipe
script; the other arguments are the recipe's own. The recipe runs with DRY_RUN=1, so
nothing is trained or written. Each trainer command it prints (`[tag] command: ...`)
is composed with Hydra from that command's own --config-path, --config-name and
overrides, as verl's entry point composes it, and printed as one YAML document with
every interpolation resolved: the progressive recipe gives one document per phase.
With `-` the dry-run output is read from stdin instead (an example script's, say).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

RECIPES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")
RECIPES = {
    "sft": "train_sft.sh",
    "progressive": "train_progressive.sh",
    "self_improve": "self_improve.sh",
    "grpo": "train_grpo.sh",
}
# The line every recipe prints for each trainer it starts (and, with DRY_RUN=1, would start).
COMMAND_LINE = re.compile(r"^\[(?P<tag>[^\]]+)\] command: (?P<command>.+)$", re.MULTILINE)
SKIPPED_LINE = re.compile(r"^\[[^\]]+\] complete .*$", re.MULTILINE)
# Hydra's command-line options, long and short, -> the field they fill.
HYDRA_OPTIONS = {
    "--config-path": "config_dir",
    "-cp": "config_dir",
    "--config-name": "config_name",
    "-cn": "config_name",
}


class UsageError(Exception):
    """Bad input: reported as one `error:` line."""


@dataclass
class TrainerCommand:
    tag: str  # "sft", "phase 2", "rl"
    module: str  # the entry point after `-m`, e.g. verl.trainer.sft_trainer
    config_dir: str = ""
    config_name: str = ""
    overrides: list[str] = field(default_factory=list)


def parse_command(tag: str, line: str) -> TrainerCommand:
    """A recipe's printed command -> the Hydra inputs of the trainer it starts."""
    tokens = shlex.split(line)
    modules = [i for i, token in enumerate(tokens[:-1]) if token == "-m"]
    if not modules:
        raise UsageError(f"[{tag}] command starts no `-m module`: {line}")
    start = modules[-1] + 1  # torchrun's own `-m torch.distributed.run` comes first
    command = TrainerCommand(tag, tokens[start])
    rest = iter(tokens[start + 1 :])
    for token in rest:
        name, has_value, value = token.partition("=")
        if name in HYDRA_OPTIONS:
            setattr(command, HYDRA_OPTIONS[name], value if has_value else next(rest, ""))
        else:
            command.overrides.append(token)
    if not command.config_dir or not command.config_name:
        raise UsageError(f"[{tag}] command has no --config-path/--config-name: {line}")
    return command


def parse_commands(output: str) -> list[TrainerCommand]:
    """Every trainer command in a recipe's (dry-run) output, in order."""
    return [parse_command(m["tag"], m["command"]) for m in COMMAND_LINE.finditer(output)]


def compose(command: TrainerCommand):
    """The config verl's @hydra.main entry point builds from this command line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=os.path.abspath(command.config_dir), version_base=None):
        return hydra_compose(config_name=command.config_name, overrides=command.overrides)


def to_yaml(config) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(config, resolve=True)


def recipe_script(name: str) -> str:
    if name in RECIPES:
        return os.path.join(RECIPES_DIR, RECIPES[name])
    if os.path.isfile(name):
        return name
    raise UsageError(f"unknown recipe {name!r}: use {', '.join(RECIPES)} or the path of a recipe script")


def dry_run_output(recipe: str, args: list[str]) -> str:
    """Run the recipe with DRY_RUN=1 and return what it printed."""
    args = [a for a in args if not a.startswith("DRY_RUN=")]  # a dry run, whatever was asked
    result = subprocess.run(
        ["bash", recipe_script(recipe), *args, "DRY_RUN=1"],
        capture_output=True,
        text=True,
        env={**os.environ, "DRY_RUN": "1"},
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise UsageError(f"the recipe's dry run failed (exit {result.returncode}); its output is above")
    return result.stdout


def render(commands: list[TrainerCommand]) -> str:
    """One YAML document per command, each after a comment naming what runs it."""
    documents = []
    for command in commands:
        header = f"# [{command.tag}] python -m {command.module} --config-path={command.config_dir} --config-name={command.config_name}"
        documents.append(f"{header}\n{to_yaml(compose(command))}")
    return "---\n".join(documents)


USAGE = __doc__.split("\n\n")[1].strip("\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        if argv[0] == "-":
            output = sys.stdin.read()
        elif len(argv) < 3:
            raise UsageError(f"expected RECIPE NPROC OUT_DIR, got {' '.join(argv)}\nusage:\n{USAGE}")
        else:
            output = dry_run_output(argv[0], argv[1:])
        for line in SKIPPED_LINE.findall(output):  # finished progressive phases run nothing
            print(f"# {line}")
        commands = parse_commands(output)
        if not commands and not SKIPPED_LINE.search(output):
            raise UsageError("no `[...] command: ...` line in the recipe's output")
        sys.stdout.write(render(commands))
        return 0
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # Hydra's errors (unknown key, bad override) as one line, not a traceback
        print(f"error: Hydra cannot compose the config: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
