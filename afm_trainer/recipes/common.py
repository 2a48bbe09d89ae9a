"""What every recipe shares: its command line, input checks, and launching verl.

A recipe's command line is ``NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]``.
Arguments are split by shape: an UPPER_CASE ``KEY=VALUE`` is a recipe argument (falling
back to the environment), anything else goes to Hydra unchanged. Every run, dry or not,
first prints the recipe arguments it was given and where each came from, so a stale
``export MODEL=...`` is seen before it trains the wrong model. Bad input ends with one
``error:`` line naming what is wrong, before any process starts, instead of a traceback
from deep in verl.
"""

from __future__ import annotations

import fcntl
import functools
import glob
import hashlib
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from afm_trainer.checkpoints import CheckpointError, finalize
from afm_trainer.metrics import METRICS_FILE, rotate_metrics

RECIPE_KEY = re.compile(r"^[A-Z][A-Z0-9_]*=")

# Recipe arguments every torchrun-launched recipe takes.
LAUNCH_KEYS = {
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

    @property
    def dry_run(self) -> bool:
        return self.get("DRY_RUN", "0") not in ("0", "false")

    def integer(self, key: str, default: int | str, minimum: int = 0, maximum: int | None = None) -> int:
        """An integer recipe argument, checked: a bad value is one error line naming it."""
        text = self.get(key, str(default))
        value = int(text) if re.fullmatch(r"-?\d{1,18}", text.strip()) else None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bounds = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
            raise RecipeError(f"{key} must be a whole number {bounds}, got {text!r}")
        return value

    def number(self, key: str, default: float | str) -> float:
        """A positive real recipe argument (a learning rate), checked."""
        text = self.get(key, str(default))
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or value <= 0:
            raise RecipeError(f"{key} must be a positive number, got {text!r}")
        return value


def parse_recipe_args(argv: list[str], known_keys: dict[str, str]) -> RecipeArgs:
    if len(argv) < 2:
        raise RecipeError("usage: NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]")
    nproc_text, out_dir, rest = argv[0], argv[1], argv[2:]
    if not nproc_text.isdigit() or int(nproc_text) < 1:
        raise RecipeError(f"NPROC must be a whole number >= 1, got {nproc_text!r}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise RecipeError(f"OUT_DIR {out_dir} is a file, not a folder")
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


def argument_sources(args: RecipeArgs, known_keys: dict[str, str]) -> list[str]:
    """One line per recipe argument that is set, with its source; then the keys left at
    their defaults. ``KEY=`` on the command line sets a key back to its default."""
    lines, defaults = [], []
    for key in known_keys:
        if key in args.keys:
            source = "command line"
        elif os.environ.get(key):
            source = "environment"
        else:
            defaults.append(key)
            continue
        value = args.get(key)
        if value is None:
            defaults.append(key)
        else:
            lines.append(f"  {key}={value}  ({source})")
    if defaults:
        lines.append(f"  defaults: {', '.join(defaults)}")
    return lines


def recipe_main(body, argv: list[str] | None, known_keys: dict[str, str]) -> int:
    """Parse a recipe's command line, print its arguments' sources, hold OUT_DIR (a real
    run) and run ``body(args)``; a RecipeError becomes one ``error:`` line and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_recipe_args(argv, known_keys)
        print("recipe arguments:", *argument_sources(args, known_keys), sep="\n", flush=True)
        if not args.dry_run:
            lock_out_dir(args.out_dir, args.integer("NODE_RANK", 0))
        return body(args)
    except (RecipeError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        release_out_dir()


LOCK_FILE = ".afm-trainer-node{rank}.lock"
_held_locks: list[int] = []  # the trainers inherit these descriptors: the lock is held while any of them runs
_made_for_lock: list[str] = []  # folders lock_out_dir created, removed again if the run wrote nothing


def lock_out_dir(out_dir: str, node_rank: int = 0) -> None:
    """Hold OUT_DIR for this run: an flock'ed file in it, released when this process and
    every trainer it started (they inherit the descriptor) have exited, kill -9
    included. A second run on the same OUT_DIR (from the same node: the nodes of one
    multi-node run share it) is refused in one line naming the holder."""
    missing, folder = [], os.path.abspath(out_dir)
    while not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    os.makedirs(out_dir, exist_ok=True)
    _made_for_lock[:] = missing
    path = os.path.join(out_dir, LOCK_FILE.format(rank=node_rank))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 1000).decode(errors="replace").strip() or "a process that wrote no details"
        os.close(fd)
        raise RecipeError(
            f"OUT_DIR {out_dir} is in use by another run ({holder}); wait for it or pick another OUT_DIR"
        ) from None
    os.ftruncate(fd, 0)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    command = " ".join(shlex.quote(a) for a in sys.argv)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}\n".encode())
    _held_locks.append(fd)


def release_out_dir() -> None:
    """Close this process's hold on OUT_DIR (trainers still running keep it held); an
    OUT_DIR made for the lock and left with nothing else in it (the run was refused) is
    removed, so bad input leaves nothing behind."""
    while _held_locks:
        os.close(_held_locks.pop())
    if _made_for_lock:
        out_dir = _made_for_lock[0]
        if all(name.startswith(".afm-trainer-node") for name in os.listdir(out_dir)):
            for name in os.listdir(out_dir):
                os.remove(os.path.join(out_dir, name))
            for folder in _made_for_lock:
                try:
                    os.rmdir(folder)
                except OSError:  # something else was written there meanwhile
                    break
        _made_for_lock.clear()


def _die_with_parent(parent: int) -> None:
    """In a trainer's process before it runs: SIGTERM when the recipe dies, however it
    dies (torchrun and verl's trainer stop their workers on SIGTERM)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the recipe died before the line above
        os._exit(1)


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


def model_path(path: str) -> str:
    """A local model folder as an absolute path (the trainers run elsewhere); a hub id as is."""
    return os.path.abspath(path) if os.path.isdir(path) else path


def data_files(spec: str | None) -> list[str]:
    """The parquet files a ``*_FILES`` argument names: comma-separated files, folders (every
    ``*.parquet`` in them, sorted, so shards keep their order) or glob patterns."""
    files = []
    for item in (spec or "").split(","):
        if not item:
            continue
        if os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(item, "*.parquet")))
            if not found:
                raise RecipeError(f"folder {item} holds no .parquet files")
            files += found
        elif glob.has_magic(item):
            found = sorted(glob.glob(item))
            if not found:
                raise RecipeError(f"no file matches {item}")
            files += found
        else:
            files.append(item)
    return [os.path.abspath(f) for f in files]


def split_files(folder: str, split: str) -> list[str]:
    """``folder/split.parquet``, or its shards ``folder/split-0000K-of-0000N.parquet`` in
    order (as data_preprocess/prepare_train_val.py writes them); [] when there is neither."""
    single = os.path.join(folder, f"{split}.parquet")
    if os.path.isfile(single):
        return [single]
    return sorted(glob.glob(os.path.join(folder, f"{split}-*-of-*.parquet")))


def check_parquet_files(
    files: list[str], what: str, columns: tuple[str, ...] = (), verls_dataset: bool = False
) -> None:
    """Each file exists, is parquet and has ``columns``. A file whose messages column is
    ``messages_with_untrained_turns`` has ``messages`` for afm-trainer's datasets; for
    verl's own MultiTurnSFTDataset (``verls_dataset``), which would train its context, it is refused."""
    import pyarrow.parquet as pq

    from afm_trainer.data.convert import CONTEXT_MESSAGES

    for path in files:
        if not os.path.isfile(path):
            raise RecipeError(f"{what} file not found: {path}")
        try:
            schema = pq.read_schema(path)
        except Exception as exc:  # pyarrow raises several types for non-parquet input
            raise RecipeError(f"{what} file {path} is not a readable parquet file: {exc}") from None
        missing = [c for c in columns if c not in schema.names]
        if "messages" in missing and CONTEXT_MESSAGES in schema.names:
            if verls_dataset:
                raise RecipeError(
                    f"{what} file {path} holds assistant turns that are context (its column is "
                    f"`{CONTEXT_MESSAGES}`), which verl's own MultiTurnSFTDataset would train: leave "
                    "data.custom_cls at afm-trainer's AgentSFTDataset (the default)"
                )
            missing.remove("messages")
        if missing:
            makers = {"chosen": "make_pairs.py", "prompt": "make_rl_data.py"}
            how = "data_preprocess/" + next((makers[c] for c in columns if c in makers), "convert_traces.py")
            raise RecipeError(
                f"{what} file {path} has no `{'`, `'.join(missing)}` column (columns: {', '.join(schema.names)}); "
                f"make it with {how}"
            )


@functools.cache
def _override_parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def hydra_value(value: str, what: str) -> str:
    """``value`` written so that Hydra's override grammar reads it back as this very
    string: as is where it can, else single-quoted (a path holding ``=``, ``,``, spaces,
    brackets or quotes). A value Hydra or OmegaConf would still change (``${...}`` is an
    interpolation, a backslash an escape) is refused, naming ``what``."""
    if "${" in value or "\\" in value or any(ord(c) < 32 for c in value):
        raise RecipeError(
            f"{what} {value!r} holds `${{`, a backslash or a control character, which Hydra would interpret"
        )
    parser = _override_parser()
    for candidate in (value, "'" + value.replace("'", "\\'") + "'"):
        try:
            if parser.parse_override(f"key={candidate}").value() == value:
                return candidate
        except Exception:  # Hydra's grammar errors have several types
            pass
    raise RecipeError(f"{what} {value!r} cannot be passed to Hydra intact")


def hydra_list(files: list[str], what: str = "file") -> str:
    quoted = [hydra_value(f, what) for f in files]
    return quoted[0] if len(quoted) == 1 else "[" + ",".join(quoted) + "]"


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
    nnodes = args.integer("NNODES", 1, minimum=1)
    node_rank = args.integer("NODE_RANK", 0, maximum=nnodes - 1)
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}", f"--nnodes={nnodes}"]
    if nnodes == 1 and not args.get("MASTER_ADDR"):
        argv.append("--standalone")
    else:
        master = args.get("MASTER_ADDR")
        if not master:
            raise RecipeError(f"NNODES={nnodes} needs MASTER_ADDR (the address of node 0)")
        argv += [
            f"--node_rank={node_rank}",
            f"--master_addr={master}",
            f"--master_port={args.integer('MASTER_PORT', 29500, minimum=1, maximum=65535)}",
        ]
    return argv, nnodes


def device_env(nproc: int, gpus: int) -> dict[str, str]:
    """Environment every rank needs: on CPU, the CPU platform and a fair thread share."""
    if gpus:
        if nproc > gpus:
            raise RecipeError(f"NPROC={nproc} but only {gpus} GPU(s) are visible on this node")
        return {}
    threads = max(1, len(os.sched_getaffinity(0)) // nproc)
    # PyTorch's CPU allocator then asks for transparent huge pages for large tensors:
    # logits and their gradients are mapped afresh every step, and fault in 2 MB pages
    # instead of 4 kB ones.
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "1")
    return {"VERL_PLATFORM": "cpu", "OMP_NUM_THREADS": str(threads), "THP_MEM_ALLOC_ENABLE": thp}


def logger_env(out_dir: str) -> dict[str, str]:
    """Where verl's loggers write: OUT_DIR/metrics.jsonl (the ``file`` logger, which the
    reports read) and OUT_DIR/tensorboard (the ``tensorboard`` logger, when asked for)."""
    out_dir = os.path.abspath(out_dir)
    return {
        "VERL_FILE_LOGGER_PATH": os.path.join(out_dir, METRICS_FILE),
        "TENSORBOARD_DIR": os.environ.get("TENSORBOARD_DIR") or os.path.join(out_dir, "tensorboard"),
    }


def scratch_env(out_dir: str, node_rank: int = 0) -> dict[str, str]:
    """A temporary folder of the run's own, removed when the trainer exits: what verl leaves
    in the temporary folder (a lock file per checkpoint folder, never removed) goes with
    the run. It is named after OUT_DIR (``/tmp/afm-trainer-<hash>-nodeR``, one per held
    OUT_DIR) and is not inside it: a socket's path must fit in 107 bytes, and
    multiprocessing and Ray put theirs in the temporary folder. Torch's compile cache
    keeps its usual place (it outlives runs)."""
    system_tmp = os.environ.get("TMPDIR") or "/tmp"
    user = os.environ.get("USER") or str(os.getuid())
    digest = hashlib.sha256(os.path.abspath(out_dir).encode()).hexdigest()[:12]
    return {
        "TMPDIR": os.path.join(system_tmp, f"afm-trainer-{digest}-node{node_rank}"),
        "RAY_TMPDIR": os.environ.get("RAY_TMPDIR") or system_tmp,
        "VLLM_RPC_BASE_PATH": os.environ.get("VLLM_RPC_BASE_PATH") or system_tmp,
        "TORCHINDUCTOR_CACHE_DIR": os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        or os.path.join(system_tmp, f"torchinductor_{user}"),
    }


def run(launch: Launch, tag: str, dry_run: bool) -> int:
    """Print the command (always the same line a dry run prints), run it, then make its
    checkpoints' HF exports loadable (LoRA runs export PEFT-wrapped weights)."""
    print(f"[{tag}] command: {launch.shell()}", flush=True)
    if dry_run:
        return 0
    os.makedirs(launch.out_dir, exist_ok=True)
    rotate_metrics(launch.out_dir)
    scratch = launch.env.get("TMPDIR")
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)  # a killed run's leftovers
        os.makedirs(scratch)
    parent = os.getpid()
    child = subprocess.Popen(
        launch.argv,
        env={**os.environ, **launch.env},
        pass_fds=tuple(_held_locks),
        preexec_fn=(lambda: _die_with_parent(parent)) if sys.platform == "linux" else None,
    )
    # A terminated recipe terminates its trainer too, instead of leaving it running.
    signal.signal(signal.SIGTERM, lambda signum, frame: child.terminate())
    returncode = child.wait()
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    if returncode != 0:
        print(f"error: {tag} trainer exited with code {returncode} (its log is above)", file=sys.stderr)
        return returncode
    if launch.node_rank != 0:
        return 0
    for path in finalize(launch.out_dir):
        print(f"[{tag}] merged LoRA adapter into {path}/huggingface")
    return 0


def write_markdown(out_dir: str, lines: list[str], name: str = "report.md") -> None:
    """OUT_DIR/NAME from ``lines`` (written whole or not at all), also printed."""
    path = os.path.join(out_dir, name)
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    print("\n".join(lines), flush=True)
