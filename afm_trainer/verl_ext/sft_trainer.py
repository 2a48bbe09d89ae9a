"""verl's SFT trainer with one option, one default and one fix.

Option: ``data.curriculum.key`` orders training easy first, in stages
(``afm_trainer.data.curriculum``), instead of verl's shuffle; the run's order is
written to ``OUT_DIR/data_order.jsonl``.

Default: with dynamic batching, a micro-batch's token budget (``data.max_token_len_per_gpu``)
is raised to ``data.max_length`` when it is smaller, instead of verl stopping at the first
batch holding a sample longer than the budget; so a device config can set a budget that
suits the hardware without capping the sequence length.

Fix: resuming from a checkpoint taken at the end of an epoch. verl 0.9.1 restores the
train loader's state with the checkpoint. At an epoch boundary that state is an
exhausted iterator, so verl's loop passes over the next epoch without a batch
and trains the epoch after it instead: one epoch's data order is skipped and the
run ends, with exit code 0, one epoch short and without its final checkpoint. Here the
loader of such a run starts the next epoch afresh. Run it as verl's:
``torchrun -m afm_trainer.verl_ext.sft_trainer --config-path=... --config-name=...``.
"""

from __future__ import annotations

import os

import hydra
from torchdata.stateful_dataloader import StatefulDataLoader
from verl.trainer.sft_trainer import SFTTrainer
from verl.utils.device import auto_set_device
from verl.utils.distributed import destroy_global_process_group, initialize_global_process_group

from afm_trainer.data.curriculum import CurriculumSampler, curriculum_keys, write_order


def fit_micro_batch_budget(data) -> None:
    """Raise ``data.max_token_len_per_gpu`` to ``data.max_length`` where it is smaller."""
    if data.get("use_dynamic_bsz", True) and data.max_token_len_per_gpu < data.max_length:
        data.max_token_len_per_gpu = data.max_length


class AgentSFTTrainer(SFTTrainer):
    # One sample a micro-batch at least (see the module's docstring).
    fits_budget_to_max_length = True

    def __init__(self, config):
        if self.fits_budget_to_max_length:
            fit_micro_batch_budget(config.data)
        super().__init__(config)
        if self.resume_global_step and self.resume_global_step % self.steps_per_epoch == 0:
            self._build_dataloader()  # the next epoch from its first batch, in its own order
            self.ckpt_handler.train_dataloader = self.train_dataloader
        if isinstance(self.train_sampler, CurriculumSampler) and self.rank == 0:
            path = os.path.join(self.config.trainer.default_local_dir, "data_order.jsonl")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_order(self.train_sampler, self.total_training_steps, path, self.config.data.curriculum.key)

    def _build_dataloader(self):
        super()._build_dataloader()
        curriculum = self.config.data.get("curriculum") or {}
        if not curriculum.get("key"):
            return
        if not hasattr(self, "curriculum_keys"):  # computed once (``length`` tokenises every row)
            self.curriculum_keys = curriculum_keys(self.train_dataset, curriculum.key)
        self.train_sampler = CurriculumSampler(
            self.train_dataset,
            self.curriculum_keys,
            stages=int(curriculum.get("stages", 3)),
            batch_size=self.global_batch_size,
            num_replicas=self.engine.get_data_parallel_size(),
            rank=self.engine.get_data_parallel_rank(),
            seed=int(curriculum.get("seed", 0)),
        )
        loader = self.train_dataloader  # verl's, with the curriculum's sampler instead of its shuffle
        self.train_dataloader = StatefulDataLoader(
            dataset=self.train_dataset,
            batch_size=loader.batch_size,
            sampler=self.train_sampler,
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
            pin_memory=False,
            drop_last=True,
            pin_memory_device=loader.pin_memory_device,
        )


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
