"""The GRPO recipe's replay buffer: verl's synchronous one, polling every 0.1 s, built
the way verl's V1 trainer builds a custom sampler from the recipe's configuration."""

import pytest
from hydra import compose, initialize_config_dir
from verl.utils.import_utils import load_extern_object

from afm_trainer.recipes.grpo.main import CONFIG_DIR


def build(*overrides):
    """What PPOTrainer._build_replay_buffer does for a custom sampler."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = compose(config_name="grpo", overrides=["device=cpu", *overrides])
    sampler = config.trainer.v1.sampler
    cls = load_extern_object(sampler.custom_sampler.path, sampler.custom_sampler.name)
    mode = config.trainer.v1.trainer_mode
    return cls(
        trainer_mode=mode,
        trainer_config=config.trainer.v1.get(mode, {}),
        max_off_policy_threshold=sampler.max_off_policy_threshold,
        max_off_policy_strategy=sampler.max_off_policy_strategy,
        sampler_kwargs=sampler.sampler_kwargs,
        refill_fn=lambda n: None,
    )


def test_the_recipe_polls_for_finished_rollouts_every_tenth_of_a_second():
    assert build().poll_interval == 0.1  # verl's own: 2.0
    assert build("trainer.v1.sampler.sampler_kwargs.poll_interval_s=0.5").poll_interval == 0.5


@pytest.mark.parametrize("override", ["trainer.v1.trainer_mode=colocate_async", "algorithm.filter_groups.enable=true"])
def test_dapo_or_an_async_trainer_is_told_to_use_verls_sampler(override):
    with pytest.raises(ValueError, match="custom_sampler.path=null"):
        build(override)
