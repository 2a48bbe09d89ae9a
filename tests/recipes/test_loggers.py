"""Experiment tracking: verl's loggers from every recipe with one override,
``trainer.logger=[console,file,tensorboard]``; tensorboard writes to OUT_DIR/tensorboard."""

import pytest

from tests.conftest import run_recipe


@pytest.mark.e2e
def test_sft_writes_tensorboard_events_to_out_dir(tmp_path, nano_model, starter_data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "sft"
    result = run_recipe(
        1,
        out,
        f"MODEL={nano_model}",
        f"TRAIN_FILES={starter_data[0]}",
        "trainer.total_training_steps=2",
        "trainer.logger=[console,file,tensorboard]",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2] and all(e.value > 0 for e in losses)


def test_every_recipe_tells_its_trainer_where_tensorboard_writes(tmp_path, nano_model, starter_data):
    out = tmp_path / "o"
    result = run_recipe(1, out, f"MODEL={nano_model}", f"TRAIN_FILES={starter_data[0]}", "DRY_RUN=1")
    assert f"TENSORBOARD_DIR={out}/tensorboard" in result.stdout
    from afm_trainer.data.rl_data import make_rl_data
    from afm_trainer.suites import RLDataRequest
    from tests.recipes.test_rl_recipe import run_rl

    make_rl_data(["algorithmic"], RLDataRequest(str(tmp_path / "rl"), difficulties=(1,), n_train=4, n_val=2))
    rl = run_rl(1, out, f"MODEL={nano_model}", f"TRAIN_FILES={tmp_path / 'rl' / 'train.parquet'}", "DRY_RUN=1")
    assert rl.returncode == 0, rl.stderr
    # the RL trainer logs from a Ray actor: the path travels in Ray's runtime env
    assert f"+ray_kwargs.ray_init.runtime_env.env_vars.TENSORBOARD_DIR={out}/tensorboard" in rl.stdout
