"""Preference training (DPO and variants) on verl's SFT engine: a subclass of verl's
``SFTTrainer``, run by torchrun like it (``python -m afm_trainer.recipes.dpo.trainer``,
Hydra config ``config/dpo.yaml``). What changes from SFT, and why:

- data: ``PairDataset`` + ``PairCollator`` (afm_trainer/data/pair_dataset.py); a batch is
  ``data.train_batch_size`` pairs, laid out ``[chosen, rejected]`` per pair, and
  ``force_group_size=2`` keeps each pair in one micro-batch (dynamic batching included),
  so its loss sees both halves;
- reference log-probs: computed once, before any update and before a checkpoint is
  loaded, by the same engine (same numerics) from the start model, and kept in
  ``OUT_DIR/reference/{train,val}.parquet`` with the model's identity; a resumed run reads
  them and refuses a file made for another model or other pairs;
- loss (``preference_loss``): the per-pair losses of ``losses.py``, weighted by each
  pair's ``weight``, normalised by the global batch's total weight (the engine sums
  micro-batch losses and FSDP averages ranks' gradients, as verl's ``sft_loss`` assumes);
  couplings inside a batch (Dr-DPO's log-mean-exp, seed 004's centring and dropping) are
  taken over each micro-batch, and their metric names say so;
- schedule: beta, loss type and the other settings as a function of the step or epoch
  (``settings_at``), so a resumed run continues the schedule where it stopped;
- metrics every step: loss, rewards of chosen/rejected, margin, reward accuracy, the
  log-ratios Cal-DPO calibrates (targets +-1/(2 beta)), beta and the loss type.
"""

from __future__ import annotations

import json
import os

import hydra
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import OmegaConf
from tensordict.tensorclass import NonTensorData
from torch.utils.data import DataLoader, DistributedSampler
from verl.utils import tensordict_utils as tu
from verl.utils.tracking import Tracking

from afm_trainer.data.pair_dataset import PairCollator
from afm_trainer.recipes.dpo.losses import (
    LOSS_TYPES,
    keep_mask_drop_top,
    nll_per_pair,
    pair_losses,
    pair_metrics,
)
from afm_trainer.recipes.dpo.reference import METADATA_KEY, mismatch, model_identity, reference_file, stored_identity
from afm_trainer.verl_ext.sft_trainer import AgentSFTTrainer, metric_sum, run

SETTING_KEYS = ("loss_type", "beta", "label_smoothing", "nll_coef", "dr_dpo_beta", "drop_top_fraction")


def settings_at(dpo_config, step: int, steps_per_epoch: int) -> dict:
    """The loss settings of training step ``step`` (1-based): the config's values, then
    every schedule entry whose ``from_epoch`` (1-based) or ``from_step`` has been reached,
    in order."""
    settings = {key: dpo_config[key] for key in SETTING_KEYS}
    epoch = (step - 1) // steps_per_epoch + 1
    for entry in dpo_config.get("schedule") or []:
        entry = dict(entry)
        start_epoch, start_step = entry.pop("from_epoch", None), entry.pop("from_step", None)
        if (start_epoch is None) == (start_step is None):
            raise ValueError(f"schedule entry {entry} needs exactly one of from_epoch / from_step")
        unknown = set(entry) - set(SETTING_KEYS)
        if unknown:
            raise ValueError(f"schedule entry sets unknown keys {sorted(unknown)} (known: {', '.join(SETTING_KEYS)})")
        if (start_epoch is not None and epoch >= start_epoch) or (start_step is not None and step >= start_step):
            settings.update(entry)
    if settings["loss_type"] not in LOSS_TYPES:
        raise ValueError(f"loss_type {settings['loss_type']!r} is not one of {', '.join(LOSS_TYPES)}")
    return {k: (v if k == "loss_type" else float(v)) for k, v in settings.items()}


def sequence_logps(log_probs, loss_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of a no-padding batch: the summed log-probability of its trained tokens and
    their count. ``log_probs[t]`` scores token t+1, so the mask is shifted by one, as in
    verl's ``sft_loss``."""
    values = log_probs.values()
    mask = torch.roll(loss_mask.values(), shifts=-1, dims=0).to(values.dtype)
    lengths = log_probs.offsets().diff()
    row = torch.repeat_interleave(torch.arange(len(lengths), device=values.device), lengths)
    sums = torch.zeros(len(lengths), dtype=values.dtype, device=values.device).index_add(0, row, values * mask)
    counts = torch.zeros(len(lengths), dtype=values.dtype, device=values.device).index_add(0, row, mask)
    return sums, counts


def as_pairs(tensor: torch.Tensor, pair_index: torch.Tensor, is_chosen: torch.Tensor) -> torch.Tensor:
    """Rows (in any order) -> [P, 2]: each pair's chosen then rejected value."""
    order = torch.argsort(pair_index * 2 + (~is_chosen.bool()).long())
    return tensor[order].view(-1, 2)


def preference_loss(model_output, data, dp_group=None):
    """One micro-batch's share of the global batch's preference loss, and its metric sums."""
    settings = tu.get_non_tensor_data(data=data, key="dpo", default=None)
    global_weight = tu.get_non_tensor_data(data=data, key="global_weight", default=None)
    dp_size = data["dp_size"]
    logp, tokens = sequence_logps(model_output["log_probs"], data["loss_mask"])
    pair_index, is_chosen = data["pair_index"], data["is_chosen"]
    policy = as_pairs(logp, pair_index, is_chosen)
    reference = as_pairs(data["ref_logp"].to(logp.dtype), pair_index, is_chosen)
    weight = as_pairs(data["weight"].to(logp.dtype), pair_index, is_chosen)[:, 0]
    chosen_tokens = as_pairs(tokens, pair_index, is_chosen)[:, 0]
    beta, loss_type = settings["beta"], settings["loss_type"]
    losses = pair_losses(
        policy[:, 0],
        policy[:, 1],
        reference[:, 0],
        reference[:, 1],
        loss_type=loss_type,
        beta=beta,
        label_smoothing=settings["label_smoothing"],
    )
    # This micro-batch's share of the batch: its pairs' weight over the global total.
    share = weight.sum() / global_weight
    kept = weight * keep_mask_drop_top(losses.detach(), settings["drop_top_fraction"]).to(weight.dtype)
    if loss_type == "dr_dpo":  # -beta' log(weighted mean of exp(-loss / beta')), over this micro-batch
        bp = settings["dr_dpo_beta"]
        objective = -bp * (torch.logsumexp(-losses / bp + kept.log(), 0) - kept.sum().log())
    else:
        objective = (kept * losses).sum() / kept.sum().clamp_min(1e-12)
    loss = objective * share
    if settings["nll_coef"]:
        loss = loss + settings["nll_coef"] * (weight * nll_per_pair(policy[:, 0], chosen_tokens)).sum() / global_weight
    metrics = {"pairs": float(len(losses)), "kept_pairs": float((kept > 0).sum()), "micro_batches": 1.0}
    for name, values in pair_metrics(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], beta).items():
        metrics[f"sum/{name}"] = float(values.sum())
    return loss * dp_size, metrics


def summed_metrics(metrics: dict) -> dict:
    """Micro-batch and rank metric sums (nested lists) -> per-pair means."""
    pairs = metric_sum(metrics["pairs"])
    out = {
        "dpo/kept_fraction": metric_sum(metrics["kept_pairs"]) / pairs,
        # the batch that dr_dpo, sigmoid_centred and drop_top_fraction couple pairs over
        "dpo/pairs_per_micro_batch": pairs / metric_sum(metrics["micro_batches"]),
    }
    for key, values in metrics.items():
        if key.startswith("sum/"):
            out[f"dpo/{key[4:]}"] = metric_sum(values) / pairs
    return out


class PreferenceTrainer(AgentSFTTrainer):
    # A micro-batch's budget holds whole pairs, and the recipe refuses a pair that does not fit it.
    fits_budget_to_max_length = False

    def _build_engine(self):
        super()._build_engine()
        self.loss_fn = preference_loss
        self.training_client.set_loss_fn(loss_fn=self.loss_fn)

    def _build_dataloader(self):
        super()._build_dataloader()  # data.train_batch_size pairs per step, sharded by pair
        references = getattr(self, "references", {})
        self.collate_fn = self.train_dataloader.collate_fn = PairCollator(references.get("train"))
        if self.val_dataloader is not None:
            self.val_dataloader.collate_fn = PairCollator(references.get("val"))

    def _init_engine(self):
        super()._init_engine()
        mode = self.config.dpo.reference
        if mode not in ("precomputed", "live"):
            raise ValueError(f"dpo.reference must be precomputed or live, got {mode!r}")
        self.live_reference = mode == "live"
        if self.live_reference:
            if not int(self.config.model.get("lora_rank", 0) or 0):
                raise ValueError(
                    "dpo.reference=live needs LoRA (model.lora_rank > 0): the reference is the adapter off"
                )
            return
        # The engine holds the start model now, before any checkpoint is loaded.
        self.references = {"train": self._reference_logps(self.train_dataset, "train")}
        if self.val_dataset is not None:
            self.references["val"] = self._reference_logps(self.val_dataset, "val")
        self.collate_fn.reference = self.references["train"]
        if self.val_dataloader is not None:
            self.val_dataloader.collate_fn.reference = self.references.get("val")

    def _meta_info(self) -> dict:
        return {
            "use_remove_padding": self.config.model.use_remove_padding,
            "use_dynamic_bsz": self.config.data.use_dynamic_bsz,
            "max_token_len_per_gpu": self.config.data.max_token_len_per_gpu,
            "micro_batch_size_per_gpu": self.config.data.micro_batch_size_per_gpu,
            "temperature": 1.0,
            "global_batch_size": self.global_batch_size,
            "pad_mode": self.config.data.pad_mode,
            "pad_token_id": self.model_config.tokenizer.pad_token_id,
            "force_group_size": 2,  # a pair's two rows stay in one micro-batch
        }

    def _reference_logps(self, dataset, split: str) -> torch.Tensor:
        """[N, 2] reference log-probs (chosen, rejected) of every pair, from the file when it
        matches this model and these pairs, else computed now and written."""
        path = reference_file(self.config.trainer.default_local_dir, split)
        identity = {**model_identity(self.config.model.path), "pair_ids": [p["pair_id"] for p in dataset.pairs]}
        if os.path.exists(path):
            if problem := mismatch(path, stored_identity(path), identity):
                raise ValueError(problem)
            table = pq.read_table(path)
            return torch.tensor([table["ref_chosen_logp"].to_pylist(), table["ref_rejected_logp"].to_pylist()]).T
        dp_rank, dp_size = self.engine.get_data_parallel_rank(), self.engine.get_data_parallel_size()
        sampler = DistributedSampler(dataset, shuffle=False, num_replicas=dp_size, rank=dp_rank, drop_last=False)
        batch_size = max(1, self.train_batch_size_per_dp)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=PairCollator())
        found = {}
        for batch in loader:
            data = tu.get_tensordict(tensor_dict=batch, non_tensor_dict={**self._meta_info(), "compute_loss": False})
            output = self.training_client.infer_batch(data)
            logp, _ = sequence_logps(output["log_probs"], batch["loss_mask"])
            for index, chosen, value in zip(batch["pair_index"].tolist(), batch["is_chosen"].tolist(), logp.tolist()):
                found[(index, chosen)] = value
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, found)
        for part in gathered:
            found.update(part)
        reference = torch.tensor([[found[(i, True)], found[(i, False)]] for i in range(len(dataset))])
        if torch.distributed.get_rank() == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            table = pa.table(
                {
                    "pair_id": identity["pair_ids"],
                    "ref_chosen_logp": reference[:, 0].tolist(),
                    "ref_rejected_logp": reference[:, 1].tolist(),
                }
            )
            table = table.replace_schema_metadata({METADATA_KEY: json.dumps(identity)})
            pq.write_table(table, path + ".tmp")
            os.replace(path + ".tmp", path)
        torch.distributed.barrier()
        return reference

    def _batch(self, batch: dict, settings: dict):
        """A loader batch as the engine takes it, with this step's settings and the global
        batch's total pair weight (every rank's micro-batches are shares of it)."""
        if self.live_reference:  # the same weights with the LoRA adapter switched off
            reference = tu.get_tensordict(
                tensor_dict=dict(batch),
                non_tensor_dict={**self._meta_info(), "compute_loss": False, "no_lora_adapter": True},
            )
            batch["ref_logp"], _ = sequence_logps(
                self.training_client.infer_batch(reference)["log_probs"], batch["loss_mask"]
            )
        local_weight = batch["weight"][batch["is_chosen"]].sum().double()
        group = self.engine.get_data_parallel_group()
        if self.engine.get_data_parallel_size() > 1:
            torch.distributed.all_reduce(local_weight, group=group)
        data = tu.get_tensordict(
            tensor_dict=batch,
            non_tensor_dict={**self._meta_info(), "dpo": settings, "global_weight": float(local_weight)},
        )
        seqlens = self._get_batch_seqlens(data=data)
        tu.assign_non_tensor(data, global_token_num=NonTensorData(seqlens))
        return data

    def _validate(self, settings: dict) -> dict:
        sums = {}
        for batch in self.val_dataloader:
            output = self.training_client.infer_batch(self._batch(batch, settings))
            metrics = tu.get(output, "metrics")
            for key, value in summed_metrics(metrics).items():
                sums.setdefault(key, []).append(value)
            sums.setdefault("loss", []).append(metrics["loss"])
        return {f"val/{key.removeprefix('dpo/')}": sum(v) / len(v) for key, v in sums.items()}

    def fit(self):
        is_logging = self.engine.is_mp_src_rank_with_outputs() and self.engine.get_data_parallel_rank() == 0
        if is_logging:
            tracking = Tracking(
                project_name=self.config.trainer.project_name,
                experiment_name=self.config.trainer.experiment_name,
                default_backend=self.config.trainer.logger,
                config=OmegaConf.to_container(self.config, resolve=True),
            )
        global_step = self.resume_global_step
        for epoch in range(global_step // self.steps_per_epoch, self.config.trainer.total_epochs):
            self.train_sampler.set_epoch(epoch=epoch)
            for batch in self.train_dataloader:
                global_step += 1
                settings = settings_at(self.config.dpo, global_step, self.steps_per_epoch)
                data = self._batch(batch, settings)
                tu.assign_non_tensor(data, update_lr_scheduler=True)
                output = self.training_client.train_batch(data=data)
                if is_logging:
                    raw = tu.get(output, "metrics")
                    metrics = {f"train/{k}": raw[k] for k in ("loss", "grad_norm", "lr") if k in raw}
                    metrics.update(summed_metrics(raw))
                    metrics["dpo/beta"] = settings["beta"]
                    metrics["dpo/loss_type_id"] = float(LOSS_TYPES.index(settings["loss_type"]))
                    metrics["train/epoch"] = float(epoch + 1)
                    tracking.log(data=metrics, step=global_step)
                is_last_step = global_step >= self.total_training_steps
                if self.val_dataloader is not None and (
                    is_last_step or (self.test_freq > 0 and global_step % self.test_freq == 0)
                ):
                    val = self._validate(settings)
                    if is_logging:
                        tracking.log(data=val, step=global_step)
                    torch.distributed.barrier()
                if is_last_step or (self.save_freq > 0 and global_step % self.save_freq == 0):
                    self.ckpt_handler.save_checkpoint(step=global_step)
                if is_last_step:
                    return


@hydra.main(config_path="config", config_name="dpo", version_base=None)
def main(config):
    run(PreferenceTrainer, config)


if __name__ == "__main__":
    main()
