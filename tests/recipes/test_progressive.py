"""recipes/train_progressive.sh: phases, latest complete checkpoints, resume, DRY_RUN, nodes."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from afm_trainer.checkpoints import TRACKER_FILE, latest_complete, tracked_step
from tests.conftest import REPO, kill_tree, run_recipe
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


@pytest.mark.e2e
def test_dry_run_prints_what_the_real_run_runs_and_resume_after_kill(tmp_path, nano_model, data_dir):
    out = tmp_path / "prog"
    args = [1, out, f"MODEL={nano_model}", f"DATA_DIR={data_dir}", *SHORT]
    dry = progressive(*args, "DRY_RUN=1")
    assert dry.returncode == 0, dry.stderr
    planned = command_lines(dry.stdout)
    assert [line.split(" command:")[0] for line in planned] == ["[phase 1]", "[phase 2]", "[phase 3]"]
    assert not out.exists()

    # A real run, killed (every process) right after phase 2's first checkpoint.
    child = subprocess.Popen(
        ["bash", RECIPE, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"},
    )
    seen = []
    for line in child.stdout:
        seen.append(line)
        if "Updated checkpoint tracker" in line and "phase2_summary_only" in line:
            kill_tree(child.pid)
            break
    child.wait()
    phase2 = out / "phase2_summary_only"
    killed_at = tracked_step(str(phase2))
    assert killed_at is not None and killed_at < 4
    assert (out / "phase1_multiturn" / "PHASE_COMPLETE").exists() and not (phase2 / "PHASE_COMPLETE").exists()

    resumed = progressive(*args)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "[phase 1] complete" in resumed.stdout  # not run again
    with open(phase2 / "metrics.jsonl") as f:
        assert int(f.readline().split('"step":')[1].split(",")[0]) == killed_at + 1  # no step repeated
    assert tracked_step(str(phase2)) == 4 and tracked_step(str(out / "phase3_summary_prefix")) == 4

    # Every command a real run printed is the dry run's, the placeholder filled in.
    real = set(command_lines("".join(seen)) + command_lines(resumed.stdout))  # phase 2 printed by both runs
    phase1_export = os.path.join(latest_complete(str(out / "phase1_multiturn")), "huggingface")
    phase2_export = os.path.join(latest_complete(str(phase2)), "huggingface")
    expected = [
        line.replace(str(out / "phase1_multiturn" / "global_step_LATEST" / "huggingface"), phase1_export).replace(
            str(phase2 / "global_step_LATEST" / "huggingface"), phase2_export
        )
        for line in planned
    ]
    assert real == set(expected) and len(expected) == 3

    # A dry run of the finished recipe shows what a real re-run would do: nothing.
    again = progressive(*args, "DRY_RUN=1")
    assert again.returncode == 0 and not command_lines(again.stdout)
    assert again.stdout.count("complete (") == 3
    assert "phase3_summary_prefix" in expected[2] and phase2_export in expected[2]


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
