import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tests never reach a model hub: everything they load is built here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def fresh_python(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter without the caller's VERL_* settings (verl selects
    its platform, and a process group is made, once per process)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VERL_")}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env={**clean, **env}, timeout=300
    )


@pytest.fixture(scope="session")
def nano_model(tmp_path_factory):
    """A nano Qwen2 model folder, built once per test session."""
    from afm_trainer.models.tiny import build_tiny_model

    path = str(tmp_path_factory.mktemp("models") / "nano")
    build_tiny_model(path, size="nano")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The demo's tiny Qwen2 (head size 32: vLLM's CPU attention has no kernel for nano's 16)."""
    from afm_trainer.models.tiny import build_tiny_model

    path = str(tmp_path_factory.mktemp("models") / "tiny")
    build_tiny_model(path, size="tiny")
    return path


@pytest.fixture(scope="session")
def starter_data(tmp_path_factory):
    """(train.parquet, val.parquet) of the bundled starter set, small."""
    from afm_trainer.data.starter import write_starter_dataset

    return write_starter_dataset(str(tmp_path_factory.mktemp("data")), n_train=192, n_val=32)


def run_recipe(*args, recipe="train_sft", env=None, timeout=300):
    """Run recipes/RECIPE.sh as a user would; returns the CompletedProcess."""
    return subprocess.run(
        ["bash", os.path.join(REPO, "recipes", f"{recipe}.sh"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
    )


def kill_at_first_checkpoint(argv: list[str]) -> None:
    """Run a recipe command and kill it, every process at once, right after its first
    checkpoint: a crash or preemption mid-run."""
    child = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"},
    )
    for line in child.stdout:
        if "Updated checkpoint tracker" in line:
            kill_tree(child.pid)
            break
    child.wait()


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once, as a crash or preemption would
    (torchrun starts its workers in sessions of their own, so a process group is not enough)."""
    import signal

    import psutil

    root = psutil.Process(pid)
    tree = root.children(recursive=True) + [root]
    for process in tree:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=30)


def chat_prompt_ids(tokenizer) -> list[list[int]]:
    """Three chat prompts of different lengths (left padding must not change answers), as token ids."""
    texts = ["Compute: 1+2", "Reverse the string: abcdef please", "hi"]
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True)[
            "input_ids"
        ]
        for t in texts
    ]
