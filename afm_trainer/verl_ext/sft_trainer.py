"""verl's SFT trainer with one fix: resuming from a checkpoint taken at the end of an epoch.

verl 0.9.1 restores the train loader's state with the checkpoint. At an epoch boundary
that state is an exhausted iterator, so verl's loop passes over the next epoch without a
batch and trains the epoch after it instead: one epoch's data order is skipped and the
run ends, with exit code 0, one epoch short and without its final checkpoint. Here the
loader of such a run starts the next epoch afresh. Run it as verl's:
``torchrun -m afm_trainer.verl_ext.sft_trainer --config-path=... --config-name=...``.
"""

from __future__ import annotations

import hydra
from verl.trainer.sft_trainer import SFTTrainer
from verl.utils.device import auto_set_device
from verl.utils.distributed import destroy_global_process_group, initialize_global_process_group


class AgentSFTTrainer(SFTTrainer):
    def __init__(self, config):
        super().__init__(config)
        if self.resume_global_step and self.resume_global_step % self.steps_per_epoch == 0:
            self._build_dataloader()  # the next epoch from its first batch, in its own order
            self.ckpt_handler.train_dataloader = self.train_dataloader


def metric_sum(values) -> float:
    """The total of a loss function's metric over micro-batches and ranks (verl hands it
    back as nested lists)."""
    if isinstance(values, list | tuple):
        return sum(metric_sum(v) for v in values)
    return float(values)


def run(trainer_class, config) -> None:
    initialize_global_process_group()
    trainer_class(config=config).fit()
    destroy_global_process_group()


@hydra.main(config_path=None, config_name=None, version_base=None)
def main(config):
    auto_set_device(config)
    run(AgentSFTTrainer, config)


if __name__ == "__main__":
    main()
