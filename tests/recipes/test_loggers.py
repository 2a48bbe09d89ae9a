"""Experiment tracking: verl's loggers from every recipe with one override,
``trainer.logger=[console,file,tensorboard]``; tensorboard writes to OUT_DIR/tensorboard
(its events from a real run: tests/recipes/test_sft_recipe.py)."""

from tests.conftest import run_recipe


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
