"""recipes/train_progressive.sh: phases, latest complete checkpoints, resume, DRY_RUN, nodes."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from afm_trainer.checkpoints import TRACKER_FILE, latest_complete, tracked_step
from tests.conftest import REPO, run_recipe
from tests.data.test_convert_traces import SEARCH, write_jsonl

RECIPE = os.path.join(REPO, "recipes", "train_progressive.sh")
SHORT = [
    "trainer.total_training_steps=4",
    "trainer.save_freq=2",
    "data.train_batch_size=4",
    "PHASE1_LR=1e-3",
    "PHASE2_LR=1e-3",
    "PHASE3_LR=5e-4",
]


def progressive(*args, timeout=600):
    return run_recipe(*args, recipe="train_progressive", timeout=timeout)


def _make_step(root, step, files=("model_world_size_1_rank_0.pt",), mtime=None):
    folder = root / f"global_step_{step}"
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text("x")
    if mtime is not None:
        os.utime(folder, (mtime, mtime))
    return folder


def test_latest_is_the_highest_finished_step_never_the_newest_folder(tmp_path):
    from tests.recipes.test_checkpoints import write_checkpoint

    old_high = write_checkpoint(tmp_path, 100)  # older, higher step
    os.utime(old_high, (time.time() - 3600, time.time() - 3600))
    write_checkpoint(tmp_path, 50)  # newer, lower step (e.g. copied later)
    _make_step(tmp_path, 150, mtime=time.time())  # a crash's partial folder: above the tracker
    (tmp_path / TRACKER_FILE).write_text("100")
    assert latest_complete(str(tmp_path)) == str(old_high)
    out = subprocess.run(
        [sys.executable, "-m", "afm_trainer.checkpoints", "latest", str(tmp_path)], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == str(old_high)


def test_no_complete_checkpoint_exits_1(tmp_path):
    from tests.recipes.test_checkpoints import write_checkpoint

    write_checkpoint(tmp_path, 10)  # every file written, but verl never got to the tracker
    out = subprocess.run(
        [sys.executable, "-m", "afm_trainer.checkpoints", "latest", str(tmp_path)], capture_output=True, text=True
    )
    assert out.returncode == 1 and "no complete checkpoint" in out.stderr


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A small run_pipeline.sh output: 16 search traces -> the three sets."""
    tmp = tmp_path_factory.mktemp("prog_data")
    records = [{**SEARCH, "id": f"t{i}", "question": f"Where was person {i} born?"} for i in range(16)]
    src = write_jsonl(tmp / "in.jsonl", records)
    result = subprocess.run(
        ["bash", os.path.join(REPO, "data_preprocess", "run_pipeline.sh"), src, str(tmp / "data")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr
    return tmp / "data"


def command_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("[phase ") and " command: " in line]


def test_dry_run_prints_the_three_phases_each_from_the_one_before(tmp_path, nano_model, data_dir):
    """The progressive command is the chain config/progressive.yaml (the chain machinery
    itself, kill and resume included, is tested through recipes/self_improve.sh)."""
    out = tmp_path / "prog"
    dry = progressive(1, out, f"MODEL={nano_model}", f"DATA_DIR={data_dir}", "PHASE2_LR=3e-5", "DRY_RUN=1")
    assert dry.returncode == 0, dry.stderr
    planned = command_lines(dry.stdout)
    assert [line.split(" command:")[0] for line in planned] == ["[phase 1]", "[phase 2]", "[phase 3]"]
    starts = [f"model.path={nano_model}"] + [
        f"model.path={out / folder / 'global_step_LATEST' / 'huggingface'}"
        for folder in ("phase1_multiturn", "phase2_summary_only")
    ]
    for line, folder, data, lr, epochs, start in zip(
        planned,
        ("phase1_multiturn", "phase2_summary_only", "phase3_summary_prefix"),
        ("multiturn", "summary_only", "summary_prefix"),
        ("1e-5", "3e-5", "5e-6"),
        ("10", "10", "5"),
        starts,
    ):
        assert f"trainer.default_local_dir={out / folder}" in line and start in line
        assert f"data.train_files={data_dir / data / 'train.parquet'}" in line
        assert f"optim.lr={lr}" in line and f"trainer.total_epochs={epochs}" in line
    assert not out.exists()


def test_missing_data_and_bad_nproc_are_one_line_errors(tmp_path, nano_model):
    for args, message in (
        ([1, tmp_path / "o", f"MODEL={nano_model}"], "no data for phase 1: set DATA_DIR or PHASE1_TRAIN_FILES"),
        ([1, tmp_path / "o", f"MODEL={nano_model}", f"DATA_DIR={tmp_path}/none"], "TRAIN_FILES file not found"),
        (["x", tmp_path / "o", f"MODEL={nano_model}"], "NPROC must be a whole number"),
    ):
        result = progressive(*args, timeout=60)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines


@pytest.mark.e2e
def test_two_nodes_on_localhost(tmp_path, nano_model, starter_data):
    train, _ = starter_data
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two_nodes"
    common = [
        f"MODEL={nano_model}",
        f"TRAIN_FILES={train}",
        "NNODES=2",
        "MASTER_ADDR=127.0.0.1",
        f"MASTER_PORT={port}",
        "trainer.total_training_steps=3",
        "optim.lr=1e-3",
    ]
    env = {**os.environ, "PYTHON": sys.executable}
    nodes = [
        subprocess.Popen(
            ["bash", os.path.join(REPO, "recipes", "train_sft.sh"), "1", str(out), *common, f"NODE_RANK={r}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for r in (0, 1)
    ]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), logs[0][-2000:] + logs[1][-2000:]
    assert "--nnodes=2" in logs[0] and "--node_rank=1" in logs[1]
    assert tracked_step(str(out)) == 3
    assert (out / "global_step_3" / "model_world_size_2_rank_1.pt").exists()  # one shard per node
    # node 0 alone made the export portable (both finalising one shared folder once raced)
    config = json.loads((out / "global_step_3" / "huggingface" / "config.json").read_text())
    assert config["attn_implementation"] == "sdpa"
    assert not list((out / "global_step_3" / "huggingface").glob("*.tmp"))
