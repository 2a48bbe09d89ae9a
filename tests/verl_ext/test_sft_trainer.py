import pytest
from omegaconf import OmegaConf

from afm_trainer.verl_ext.sft_trainer import fit_micro_batch_budget


@pytest.mark.parametrize(
    "budget, max_length, dynamic, expected",
    [
        (2048, 1024, True, 2048),  # the CPU budget holds several samples
        (2048, 4096, True, 4096),  # a longer max_length raises it: every sample must fit one micro-batch
        (8192, 4096, True, 8192),
        (2048, 4096, False, 2048),  # fixed micro-batch sizes do not use it
    ],
)
def test_micro_batch_budget_fits_the_longest_sample(budget, max_length, dynamic, expected):
    config = OmegaConf.create(
        {"data": {"max_token_len_per_gpu": budget, "max_length": max_length, "use_dynamic_bsz": dynamic}}
    )
    OmegaConf.set_struct(config, True)  # as Hydra hands it to the trainer
    fit_micro_batch_budget(config.data)
    assert config.data.max_token_len_per_gpu == expected


def test_the_cpu_recipe_config_trains_with_a_max_length_beyond_its_budget():
    from hydra import compose, initialize_config_dir

    from afm_trainer.recipes.sft.main import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = compose(
            config_name="sft", overrides=["device=cpu", "data.max_length=4096", "model.path=x", "data.train_files=x"]
        )
    fit_micro_batch_budget(config.data)
    assert config.data.max_token_len_per_gpu == 4096
