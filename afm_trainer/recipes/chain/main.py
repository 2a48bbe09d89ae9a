"""A chain of training stages declared in a file: SFT, then preference training, ...

    bash recipes/train_chain.sh CHAIN NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]
    bash recipes/train_progressive.sh NPROC OUT_DIR ...   (CHAIN=progressive)
    bash recipes/self_improve.sh NPROC OUT_DIR ...        (CHAIN=self_improve)

CHAIN is a YAML file, or the name of one in ``config/`` beside this file. Each stage
names its kind (``sft``: afm_trainer.recipes.sft; ``dpo``: afm_trainer.recipes.dpo;
``distill``: afm_trainer.recipes.distill),
its data (a ``DATA_DIR`` subfolder with ``train.parquet``/``val.parquet`` or their
shards), its learning rate, epochs and Hydra overrides, and where it starts: ``MODEL``,
or the latest *complete* checkpoint of an earlier stage (by verl's tracker file, never
by modification time; default: the stage before). Every stage's setting is also a
recipe argument, prefixed with the stage's key: ``PHASE1_LR``, ``PHASE_C_EPOCHS``,
``PHASE_B_TRAIN_FILES``, ``PHASE_B_VAL_FILES``.

Re-running the same command skips finished stages (each leaves ``PHASE_COMPLETE`` last)
and resumes an unfinished one from its last checkpoint. ``DRY_RUN=1`` prints the exact
command of every stage, ``[phase 2] command: ...``, the line a real run prints before
running it; a model an earlier stage has not produced yet appears as
``DIR/global_step_LATEST/huggingface``. Hydra overrides on the command line reach every
stage, except ``dpo.*`` and ``distill.*`` ones, which reach the stages of that kind only.

With no MODEL and no data, a chain that names an ``embedded_default`` runs it (``make
demo``, ``make demo-self-improve``).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from afm_trainer.checkpoints import latest_complete, latest_export
from afm_trainer.recipes.common import RecipeArgs, RecipeError, recipe_main, run, split_files
from afm_trainer.recipes.sft.main import KEYS as SFT_KEYS
from afm_trainer.recipes.sft.main import build_sft

CONFIG_DIR = Path(__file__).resolve().parent / "config"
COMPLETE_MARKER = "PHASE_COMPLETE"
KINDS = ("sft", "dpo", "distill")


@dataclass(frozen=True)
class Stage:
    key: str  # prefix of the stage's recipe arguments: PHASE1 -> PHASE1_LR
    name: str  # in log lines: "[phase 1] command: ..."
    folder: str  # OUT_DIR/folder
    kind: str  # sft | dpo | distill
    data: str  # the DATA_DIR subfolder
    lr: str
    epochs: str
    start: str | None = None  # MODEL, an earlier stage's key; None: the stage before
    overrides: tuple[str, ...] = ()


@dataclass
class Chain:
    name: str
    stages: list[Stage]
    embedded_default: str | None = None  # a module with run_embedded_default(args, chain)
    keys: dict[str, str] = field(default_factory=dict)  # the recipe arguments it takes


def parse_stage(raw: dict, where: str, earlier: list[str]) -> Stage:
    """One stage's settings, checked (``earlier``: the keys of the stages before it)."""
    missing = [k for k in ("key", "name", "folder", "kind", "data", "lr", "epochs") if k not in raw]
    if missing:
        raise RecipeError(f"{where} has no {', '.join(missing)}")
    unknown = set(raw) - set(Stage.__dataclass_fields__)
    if unknown:
        raise RecipeError(f"{where} has unknown settings {', '.join(sorted(unknown))}")
    if raw["kind"] not in KINDS:
        raise RecipeError(f"{where}: kind {raw['kind']!r} is not one of {', '.join(KINDS)}")
    if raw.get("start") not in (None, "MODEL", *earlier):
        raise RecipeError(f"{where}: start {raw['start']!r} is neither MODEL nor an earlier stage's key")
    values = {k: v for k, v in raw.items() if v is not None}  # start: null is the stage before
    return Stage(**{k: (tuple(v) if k == "overrides" else str(v)) for k, v in values.items()})


def load_chain(spec: str) -> Chain:
    """A chain file (a path, or a name in config/), checked: one error line for a bad one."""
    path = spec if os.path.isfile(spec) else CONFIG_DIR / f"{spec}.yaml"
    if not os.path.isfile(path):
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise RecipeError(f"chain {spec} is neither a file nor one of {known}")
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    stages: list[Stage] = []
    for index, raw in enumerate(config.get("stages") or []):
        stages.append(parse_stage(raw, f"chain {path}, stage {index + 1}", [s.key for s in stages]))
    if not stages:
        raise RecipeError(f"chain {path} declares no stages")
    chain = Chain(Path(path).stem, stages, config.get("embedded_default"))
    chain.keys = chain_keys(chain)
    return chain


def chain_keys(chain: Chain) -> dict[str, str]:
    keys = {k: v for k, v in SFT_KEYS.items() if k not in ("TRAIN_FILES", "VAL_FILES")}
    keys["MODEL"] = "HF model folder the first stage starts from"
    keys["DATA_DIR"] = "folder with one subfolder of train/val parquet per stage's data"
    for s in chain.stages:
        keys[f"{s.key}_TRAIN_FILES"] = f"{s.name} training parquet (default DATA_DIR/{s.data}/train.parquet)"
        keys[f"{s.key}_VAL_FILES"] = f"{s.name} validation parquet (default DATA_DIR/{s.data}/val.parquet)"
        keys[f"{s.key}_LR"] = f"{s.name} learning rate (default {s.lr})"
        keys[f"{s.key}_EPOCHS"] = f"{s.name} epochs (default {s.epochs})"
    if chain.embedded_default:
        keys["DEMO_CONFIG"] = f"settings of the embedded default (default afm_trainer/demo/config/{chain.name}.yaml)"
    return keys


def stage_files(args: RecipeArgs, stage: Stage) -> tuple[str, str]:
    train = args.get(f"{stage.key}_TRAIN_FILES")
    val = args.get(f"{stage.key}_VAL_FILES")
    if train is None:
        data_dir = args.get("DATA_DIR")
        if data_dir is None:
            raise RecipeError(f"no data for {stage.name}: set DATA_DIR or {stage.key}_TRAIN_FILES")
        folder = os.path.join(data_dir, stage.data)
        if not os.path.isdir(folder):  # not made yet (a dry run before the data step): the files a pipeline writes
            return os.path.join(folder, "train.parquet"), val if val is not None else os.path.join(
                folder, "val.parquet"
            )
        train = ",".join(split_files(folder, "train")) or os.path.join(folder, "train.parquet")
        val = val if val is not None else ",".join(split_files(folder, "val"))
    return train, val or ""


def reaches(override: str, stage: Stage) -> bool:
    """Whether a command-line Hydra override applies to the stage (dpo.* only to preference
    stages, distill.* only to distillation stages)."""
    group = override.lstrip("+~").split(".")[0]
    return group not in ("dpo", "distill") or group == stage.kind


def stage_args(args: RecipeArgs, stage: Stage, model: str) -> RecipeArgs:
    """The recipe arguments of one stage, as its own recipe takes them."""
    train, val = stage_files(args, stage)
    keys = {
        key: args.get(key, "") for key in ("CONFIG", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "DRY_RUN")
    }
    keys.update(MODEL=model, TRAIN_FILES=train, VAL_FILES=val)
    args.number(f"{stage.key}_LR", stage.lr)  # checked; passed on as written
    overrides = [
        f"optim.lr={args.get(f'{stage.key}_LR', stage.lr)}",
        f"trainer.total_epochs={args.integer(f'{stage.key}_EPOCHS', stage.epochs, minimum=1)}",
        f"trainer.experiment_name={stage.folder}",
        *stage.overrides,
        *(o for o in args.overrides if reaches(o, stage)),
    ]
    return RecipeArgs(args.nproc, os.path.join(args.out_dir, stage.folder), keys, overrides)


def run_stage(this: RecipeArgs, stage: Stage, inputs_exist: bool) -> int:
    if stage.kind == "distill":
        from afm_trainer.recipes.distill.main import build_distill

        return run(build_distill(this, inputs_exist=inputs_exist), stage.name, this.dry_run)
    if stage.kind == "dpo":
        from afm_trainer.recipes.dpo.main import train_dpo

        return train_dpo(this, inputs_exist, tag=stage.name)
    return run(build_sft(this, inputs_exist=inputs_exist), stage.name, this.dry_run)


def train_stages(chain: Chain, args: RecipeArgs, model_exists: bool = True) -> Iterator[tuple[Stage, str]]:
    """Run the stages in order, yielding (stage, its final model) after each. A failed
    stage raises StageFailed with the trainer's exit code."""
    if not args.get("MODEL"):
        raise RecipeError("MODEL is not set (MODEL=path/to/hf_model)")
    models = {"MODEL": (args.get("MODEL"), model_exists)}
    previous = "MODEL"
    for stage in chain.stages:
        model, exists = models[stage.start or previous]
        this = stage_args(args, stage, model)
        marker = os.path.join(this.out_dir, COMPLETE_MARKER)
        if os.path.exists(marker):  # a dry run reports it too: a real run would skip it
            print(f"[{stage.name}] complete ({this.out_dir}), skipping", flush=True)
        else:
            if not exists and not args.dry_run:
                raise RecipeError(f"{stage.name} has no model to start from: {model}")
            code = run_stage(this, stage, inputs_exist=exists)
            if code != 0:
                raise StageFailed(code)
            if not args.dry_run and args.integer("NODE_RANK", 0) == 0:
                with open(marker + ".tmp", "w") as f:
                    json.dump({"stage": stage.key, "checkpoint": latest_complete(this.out_dir)}, f)
                os.replace(marker + ".tmp", marker)
            elif not args.dry_run:  # only node 0 merges a LoRA export: the next stage starts from its merge
                wait_for_node0(marker, stage)
        models[stage.key] = latest_export(this.out_dir)
        previous = stage.key
        yield stage, models[stage.key][0]


NODE0_WAIT_S = float(os.environ.get("AFM_NODE0_WAIT_S", 3600))


def wait_for_node0(marker: str, stage: Stage) -> None:
    """On nodes other than 0 of a multi-node run: wait until node 0 has finished the stage
    (its exports, LoRA merged, then the marker), in the OUT_DIR the nodes share."""
    print(f"[{stage.name}] waiting for node 0 to finish the stage's export ({marker})", flush=True)
    deadline = time.monotonic() + NODE0_WAIT_S
    while not os.path.exists(marker):
        if time.monotonic() > deadline:
            raise RecipeError(
                f"{stage.name}: node 0 did not mark the stage complete within {NODE0_WAIT_S:g} s ({marker}); "
                "the nodes of a multi-node run must share OUT_DIR"
            )
        time.sleep(min(1.0, NODE0_WAIT_S / 10))


class StageFailed(Exception):
    def __init__(self, returncode: int):
        super().__init__(f"trainer exited with code {returncode}")
        self.returncode = returncode


def run_chain(chain: Chain, args: RecipeArgs) -> int:
    first = chain.stages[0].key
    if chain.embedded_default and not any(args.get(k) for k in ("MODEL", "DATA_DIR", f"{first}_TRAIN_FILES")):
        return importlib.import_module(chain.embedded_default).run_embedded_default(args, chain)
    for stage in chain.stages:  # every stage's arguments are checked before the first trains
        stage_args(args, stage, args.get("MODEL") or "")
    try:
        stages = list(train_stages(chain, args))
    except StageFailed as exc:
        return exc.returncode
    if not args.dry_run:
        print(f"final model: {stages[-1][1]}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("error: usage: CHAIN NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]", file=sys.stderr)
        return 2
    try:
        chain = load_chain(argv[0])
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return recipe_main(lambda args: run_chain(chain, args), argv[1:], chain.keys)


if __name__ == "__main__":
    raise SystemExit(main())
