"""afm_trainer.checkpoints: which checkpoint is complete, and `latest` (API and CLI)."""

import json
import shutil
import subprocess
import sys

import pytest

from afm_trainer.checkpoints import TRACKER_FILE, CheckpointError, latest_complete, missing_files


def write_checkpoint(root, step, *, layout="sft", world_size=1, export_shards=0, optim=True):
    """DIR/global_step_<step> with the files verl writes (contents are placeholders):
    every rank's model/optim/extra_state shard and a huggingface/ export, in the step
    folder (SFT trainer) or its actor/ folder (RL trainer). export_shards > 0 writes a
    sharded export (an index and its files) instead of one model.safetensors."""
    step_dir = root / f"global_step_{step}"
    model_dir = step_dir / "actor" if layout == "rl" else step_dir
    (model_dir / "huggingface").mkdir(parents=True)
    for rank in range(world_size):
        kinds = ("model", "optim", "extra_state") if optim else ("model",)
        for kind in kinds:
            (model_dir / f"{kind}_world_size_{world_size}_rank_{rank}.pt").write_text("x")
    hf = model_dir / "huggingface"
    (hf / "config.json").write_text("{}")
    if export_shards:
        files = [f"model-{i:05d}-of-{export_shards:05d}.safetensors" for i in range(1, export_shards + 1)]
        weight_map = {f"layer.{i}.weight": name for i, name in enumerate(files)}
        (hf / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        for name in files:
            (hf / name).write_text("x")
    else:
        (hf / "model.safetensors").write_text("x")
    (step_dir / ("data.pt" if layout == "rl" else "data_0.pt")).write_text("x")
    return step_dir


def latest_cli(ckpt_dir):
    return subprocess.run(
        [sys.executable, "-m", "afm_trainer.checkpoints", "latest", str(ckpt_dir)], capture_output=True, text=True
    )


# --- complete checkpoints -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"layout": "rl"}, {"world_size": 2}, {"export_shards": 2}, {"optim": False}],
    ids=["sft", "rl_actor", "two_ranks", "sharded_export", "model_only"],
)
def test_the_trackers_step_is_latest_when_its_files_are_there(tmp_path, kwargs):
    write_checkpoint(tmp_path, 10, **kwargs)
    latest = write_checkpoint(tmp_path, 20, **kwargs)
    (tmp_path / "global_step_30").mkdir()  # a crash's leftover, above the tracker
    (tmp_path / TRACKER_FILE).write_text("20\n")
    assert missing_files(str(latest)) is None
    assert latest_complete(str(tmp_path)) == str(latest)
    out = latest_cli(tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(latest) and out.stderr == ""


def test_a_complete_folder_above_the_tracker_is_not_latest(tmp_path):
    tracked = write_checkpoint(tmp_path, 10)
    write_checkpoint(tmp_path, 20)  # every file, but verl never wrote the tracker for it
    (tmp_path / TRACKER_FILE).write_text("10")
    assert latest_complete(str(tmp_path)) == str(tracked)


def test_no_tracker_means_no_complete_checkpoint(tmp_path):
    write_checkpoint(tmp_path, 10)
    assert latest_complete(str(tmp_path)) is None
    assert latest_complete(str(tmp_path / "does_not_exist")) is None
    out = latest_cli(tmp_path)
    assert out.returncode == 1 and out.stdout == ""
    assert "no complete checkpoint" in out.stderr and len(out.stderr.splitlines()) == 1


# --- the tracker names a step that is not (all) there: an error, no fallback --------------


def _assert_one_line_error(tmp_path, step, reason):
    tracker = str(tmp_path / TRACKER_FILE)
    with pytest.raises(CheckpointError) as exc:
        latest_complete(str(tmp_path))
    assert tracker in str(exc.value) and f"step {step}" in str(exc.value) and reason in str(exc.value)
    out = latest_cli(tmp_path)
    assert out.returncode == 1 and out.stdout == ""  # nothing a script could take for a checkpoint
    assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith("error: ")
    assert tracker in out.stderr and f"step {step}" in out.stderr and reason in out.stderr


def test_tracker_naming_a_missing_step_is_an_error_not_a_fallback(tmp_path):
    write_checkpoint(tmp_path, 50)  # complete, but older than what the tracker says
    write_checkpoint(tmp_path, 150)  # complete, but above the tracker
    (tmp_path / TRACKER_FILE).write_text("100")
    _assert_one_line_error(tmp_path, 100, "is missing")


def test_an_empty_step_folder_is_not_a_checkpoint(tmp_path):
    write_checkpoint(tmp_path, 5)
    (tmp_path / "global_step_10").mkdir()
    (tmp_path / TRACKER_FILE).write_text("10")
    assert missing_files(str(tmp_path / "global_step_10")) == "no model_world_size_W_rank_R.pt"
    _assert_one_line_error(tmp_path, 10, "is incomplete: no model_world_size_W_rank_R.pt")


@pytest.mark.parametrize(
    "layout, remove, reason",
    [
        ("sft", "model_world_size_2_rank_1.pt", "model_world_size_2_rank_1.pt"),
        ("sft", "optim_world_size_2_rank_0.pt", "optim_world_size_2_rank_0.pt"),
        ("sft", "huggingface/model.safetensors", "huggingface/ weights"),
        ("sft", "huggingface/config.json", "huggingface/config.json"),
        ("sft", "huggingface", "huggingface/config.json"),
        ("rl", "actor/model_world_size_2_rank_0.pt", "actor/model_world_size_2_rank_0.pt"),
        ("rl", "actor/huggingface/model.safetensors", "actor/huggingface/ weights"),
        (
            "rl",
            "actor",
            "no model_world_size_W_rank_R.pt",
        ),  # data.pt alone, e.g. after verl's max_ckpt_to_keep deleted actor/
    ],
)
def test_a_step_folder_missing_any_of_verls_files_is_incomplete(tmp_path, layout, remove, reason):
    step_dir = write_checkpoint(tmp_path, 10, layout=layout, world_size=2)
    (tmp_path / TRACKER_FILE).write_text("10")
    target = step_dir / remove
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    _assert_one_line_error(tmp_path, 10, reason)


def test_a_sharded_export_missing_a_listed_file_is_incomplete(tmp_path):
    step_dir = write_checkpoint(tmp_path, 10, export_shards=3)
    (step_dir / "huggingface" / "model-00002-of-00003.safetensors").unlink()
    (tmp_path / TRACKER_FILE).write_text("10")
    _assert_one_line_error(tmp_path, 10, "huggingface/model-00002-of-00003.safetensors")


def test_an_unreadable_tracker_is_an_error(tmp_path):
    write_checkpoint(tmp_path, 10)
    (tmp_path / TRACKER_FILE).write_text("")  # e.g. a crash while verl's RL trainer wrote it
    with pytest.raises(CheckpointError, match="does not name a step"):
        latest_complete(str(tmp_path))
    out = latest_cli(tmp_path)
    assert out.returncode == 1 and out.stdout == "" and len(out.stderr.splitlines()) == 1


def test_the_help_states_the_rule():
    out = subprocess.run(
        [sys.executable, "-m", "afm_trainer.checkpoints", "latest", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for words in (TRACKER_FILE, "model_world_size_W_rank_R.pt", "huggingface/", "actor/", "modification time"):
        assert words in " ".join(out.stdout.split()), words
