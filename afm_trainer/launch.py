"""Turn a recipe's command line into a checked torchrun command for verl's trainers.

    python -m afm_trainer.launch sft NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]

(``recipes/train_sft.sh`` is this, for the shell.) Arguments are split by shape:
an UPPER_CASE ``KEY=VALUE`` is a recipe argument (falling back to the environment),
anything else goes to Hydra unchanged. Bad input ends with one ``error:`` line naming
what is wrong, before any process starts, instead of a traceback from deep in verl.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from afm_trainer.checkpoints import finalize
from afm_trainer.metrics import METRICS_FILE, rotate_metrics

CONFIG_DIR = Path(__file__).resolve().parent / "config"
RECIPE_KEY = re.compile(r"^[A-Z][A-Z0-9_]*=")

# Recipe arguments of the SFT recipe, with what each means (printed on a bad key).
SFT_KEYS = {
    "MODEL": "HF model folder (or hub id) to start from",
    "TRAIN_FILES": "comma-separated parquet files with a `messages` column",
    "VAL_FILES": "comma-separated parquet files for validation (optional)",
    "CONFIG": "Hydra config name in afm_trainer/config (default: sft)",
    "NNODES": "number of nodes (default 1)",
    "NODE_RANK": "this node's rank (multi-node)",
    "MASTER_ADDR": "address of node 0 (multi-node)",
    "MASTER_PORT": "port on node 0 (multi-node, default 29500)",
    "DRY_RUN": "1: print the command without running it",
}


class RecipeError(Exception):
    """A user error in a recipe's arguments: reported as one line, exit code 2."""


@dataclass
class RecipeArgs:
    nproc: int
    out_dir: str
    keys: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    def get(self, key: str, default: str | None = None) -> str | None:
        """A recipe argument from the command line, else the environment, else default."""
        value = self.keys.get(key, os.environ.get(key))
        return default if value in (None, "") else value


def parse_recipe_args(argv: list[str], known_keys: dict[str, str]) -> RecipeArgs:
    if len(argv) < 2:
        raise RecipeError("usage: NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]")
    nproc_text, out_dir, rest = argv[0], argv[1], argv[2:]
    if not nproc_text.isdigit() or int(nproc_text) < 1:
        raise RecipeError(f"NPROC must be a whole number >= 1, got {nproc_text!r}")
    args = RecipeArgs(nproc=int(nproc_text), out_dir=out_dir)
    for arg in rest:
        if RECIPE_KEY.match(arg):
            key, value = arg.split("=", 1)
            if key not in known_keys:
                known = ", ".join(sorted(known_keys))
                raise RecipeError(f"unknown recipe argument {key} (known: {known}; Hydra overrides are lower-case)")
            args.keys[key] = value
        else:
            args.overrides.append(arg)
    return args


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_model(path: str) -> None:
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise RecipeError(f"MODEL {path} is a folder without config.json (not a HF model folder)")
        return
    looks_like_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", path) and not path.startswith((".", "/"))
    if not looks_like_hub_id or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise RecipeError(f"MODEL path does not exist: {path}")


def check_parquet_files(files: list[str], what: str, column: str | None) -> None:
    import pyarrow.parquet as pq

    for path in files:
        if not os.path.isfile(path):
            raise RecipeError(f"{what} file not found: {path}")
        try:
            schema = pq.read_schema(path)
        except Exception as exc:  # pyarrow raises several types for non-parquet input
            raise RecipeError(f"{what} file {path} is not a readable parquet file: {exc}") from None
        if column and column not in schema.names:
            raise RecipeError(
                f"{what} file {path} has no `{column}` column (columns: {', '.join(schema.names)}); "
                "convert trajectories with data_preprocess/convert_traces.py"
            )


def hydra_list(files: list[str]) -> str:
    return files[0] if len(files) == 1 else "[" + ",".join(files) + "]"


def override_value(overrides: list[str], key: str) -> str | None:
    for item in overrides:
        if item.lstrip("+").split("=", 1)[0] == key:
            return item.split("=", 1)[1]
    return None


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]
    out_dir: str
    node_rank: int = 0  # only node 0 finalises: with a shared OUT_DIR, every node sees the same exports

    def shell(self) -> str:
        """The command as one shell line (environment assignments first)."""
        return " ".join([f"{k}={shlex.quote(v)}" for k, v in self.env.items()] + [shlex.quote(a) for a in self.argv])


def torchrun_argv(args: RecipeArgs) -> tuple[list[str], int]:
    """torchrun's own arguments for one node or several; returns (argv, nnodes)."""
    nnodes = int(args.get("NNODES", "1"))
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}", f"--nnodes={nnodes}"]
    if nnodes == 1 and not args.get("MASTER_ADDR"):
        argv.append("--standalone")
    else:
        master = args.get("MASTER_ADDR")
        if not master:
            raise RecipeError(f"NNODES={nnodes} needs MASTER_ADDR (the address of node 0)")
        argv += [
            f"--node_rank={args.get('NODE_RANK', '0')}",
            f"--master_addr={master}",
            f"--master_port={args.get('MASTER_PORT', '29500')}",
        ]
    return argv, nnodes


def device_env(nproc: int, gpus: int) -> dict[str, str]:
    """Environment every rank needs: on CPU, the CPU platform and a fair thread share."""
    if gpus:
        if nproc > gpus:
            raise RecipeError(f"NPROC={nproc} but only {gpus} GPU(s) are visible on this node")
        return {}
    threads = max(1, len(os.sched_getaffinity(0)) // nproc)
    # PyTorch's CPU allocator asks for transparent huge pages for large tensors: logits
    # and their gradients (tens of MB, freshly mapped every step) then fault in 2 MB pages
    # instead of 4 kB ones. 50 demo phase-1 steps: 10x fewer page faults, ~7% less time.
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "1")
    return {"VERL_PLATFORM": "cpu", "OMP_NUM_THREADS": str(threads), "THP_MEM_ALLOC_ENABLE": thp}


def build_sft(args: RecipeArgs, inputs_exist: bool = True) -> Launch:
    """Check an SFT recipe's arguments and build its torchrun command.

    ``inputs_exist=False`` (dry runs of multi-phase recipes) skips the checks of a model
    and data files that earlier steps have not produced yet."""
    model = args.get("MODEL")
    if not model:
        raise RecipeError("MODEL is not set (MODEL=path/to/hf_model)")
    if inputs_exist:
        check_model(model)
    if os.path.isdir(model):
        model = os.path.abspath(model)
    train_files = [f for f in (args.get("TRAIN_FILES") or "").split(",") if f]
    if not train_files:
        raise RecipeError("TRAIN_FILES is not set (TRAIN_FILES=train.parquet[,more.parquet])")
    val_files = [f for f in (args.get("VAL_FILES") or "").split(",") if f]
    custom_cls = override_value(args.overrides, "data.custom_cls.path")
    column = None if custom_cls not in (None, "null") else (override_value(args.overrides, "data.messages_key") or "messages")
    if inputs_exist:
        check_parquet_files(train_files, "TRAIN_FILES", column)
        check_parquet_files(val_files, "VAL_FILES", column)
    train_files, val_files = [os.path.abspath(f) for f in train_files], [os.path.abspath(f) for f in val_files]

    gpus = visible_gpus()
    env = device_env(args.nproc, gpus)
    config = args.get("CONFIG", "sft")
    if not (CONFIG_DIR / f"{config}.yaml").is_file():
        raise RecipeError(f"CONFIG {config} not found in {CONFIG_DIR}")

    argv, nnodes = torchrun_argv(args)
    argv += [
        "-m", "verl.trainer.sft_trainer",
        f"--config-path={CONFIG_DIR}", f"--config-name={config}",
        f"model.path={model}",
        f"data.train_files={hydra_list(train_files)}",
        f"data.val_files={hydra_list(val_files) if val_files else 'null'}",
        f"trainer.default_local_dir={os.path.abspath(args.out_dir)}",
        f"trainer.nnodes={nnodes}",
        f"trainer.n_gpus_per_node={args.nproc}",
    ]  # fmt: skip
    if override_value(args.overrides, "device") is None:  # the user may force device=cpu|gpu
        argv.append(f"device={'gpu' if gpus else 'cpu'}")
    if not val_files:
        argv.append("trainer.test_freq=-1")
    argv += args.overrides
    env["VERL_FILE_LOGGER_PATH"] = os.path.join(os.path.abspath(args.out_dir), METRICS_FILE)
    return Launch(argv=argv, env=env, out_dir=args.out_dir, node_rank=int(args.get("NODE_RANK", "0")))


BUILDERS = {"sft": (build_sft, SFT_KEYS)}


def run(launch: Launch, tag: str, dry_run: bool) -> int:
    """Print the command (always the same line a dry run prints), run it, then make its
    checkpoints' HF exports loadable (LoRA runs export PEFT-wrapped weights)."""
    print(f"[{tag}] command: {launch.shell()}", flush=True)
    if dry_run:
        return 0
    os.makedirs(launch.out_dir, exist_ok=True)
    rotate_metrics(launch.out_dir)
    child = subprocess.Popen(launch.argv, env={**os.environ, **launch.env})
    # A terminated recipe terminates its trainer too, instead of leaving it running.
    signal.signal(signal.SIGTERM, lambda signum, frame: child.terminate())
    returncode = child.wait()
    if returncode != 0:
        print(f"error: {tag} trainer exited with code {returncode} (its log is above)", file=sys.stderr)
        return returncode
    if launch.node_rank != 0:
        return 0
    for path in finalize(launch.out_dir):
        print(f"[{tag}] merged LoRA adapter into {path}/huggingface")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BUILDERS:
        print(f"usage: python -m afm_trainer.launch {{{','.join(BUILDERS)}}} NPROC OUT_DIR [KEY=VALUE ...] [overrides]")
        return 2
    build, keys = BUILDERS[argv[0]]
    try:
        args = parse_recipe_args(argv[1:], keys)
        launch = build(args)
        return run(launch, argv[0], dry_run=args.get("DRY_RUN", "0") not in ("0", "false"))
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
