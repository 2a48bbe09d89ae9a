"""verl's SFT trainer with seed 001's distillation loss: ``alpha * CE + beta * D(teacher, student)``.

The data carries the teacher's top-k token ids and log-probs at every position
(``afm_trainer.data.distill_dataset``). verl's FSDP engine hands the loss function the
student's logits when a micro-batch is marked ``distillation_use_topk`` (the hook verl's
on-policy distillation uses): ``distill_loss`` then returns each token's divergence
(``losses.py``), and when called again as the loss it combines it with the cross-entropy
on the same trained tokens, normalised as verl's ``sft_loss`` is (per token of the global
batch). Run it as verl's: ``torchrun -m afm_trainer.recipes.distill.trainer
--config-path=... --config-name=distill``.
"""

from __future__ import annotations

from functools import partial

import hydra
import torch
from verl.utils import tensordict_utils as tu

from afm_trainer.recipes.distill.losses import DIVERGENCES, student_topk_log_probs, token_divergence
from afm_trainer.verl_ext.sft_trainer import AgentSFTTrainer, metric_sum, run


def settings_of(config) -> dict:
    s = {k: config.distill[k] for k in ("alpha", "beta", "divergence", "jsd_beta", "temperature")}
    if s["divergence"] not in DIVERGENCES:
        raise ValueError(f"distill.divergence must be one of {', '.join(DIVERGENCES)}, got {s['divergence']!r}")
    return {**s, **{k: float(s[k]) for k in ("alpha", "beta", "jsd_beta", "temperature")}}


def distill_loss(model_output=None, data=None, dp_group=None, student_logits=None, settings=None):
    """As verl's logits processor (``student_logits`` given): each packed token's
    divergence, shape (1, nnz). As the loss: this micro-batch's share of the global
    batch's ``alpha * CE + beta * D`` over the trained tokens, and metric sums."""
    if student_logits is not None:
        ids = data["teacher_topk_ids"].values().unsqueeze(0)  # (1, nnz, k)
        teacher = data["teacher_topk_log_probs"].values().unsqueeze(0)
        student = student_topk_log_probs(student_logits, ids, settings["temperature"])
        return {"distill_divergence": token_divergence(student, teacher, settings["divergence"], settings["jsd_beta"])}
    # verl's sft_loss: the loss mask shifted left by one lines up with each token's log-prob
    mask = torch.roll(data["loss_mask"].values(), shifts=-1, dims=0).to(torch.float32)
    scale = data["dp_size"] / data["batch_num_tokens"]
    ce_sum = -(model_output["log_probs"].values().float() * mask).sum()
    divergence_sum = (model_output["distill_divergence"].values().float() * mask).sum()
    loss = (settings["alpha"] * ce_sum + settings["beta"] * divergence_sum) * scale
    metrics = {"sum/ce": ce_sum.item(), "sum/divergence": divergence_sum.item(), "sum/tokens": mask.sum().item()}
    return loss, metrics


def token_means(metrics: dict) -> dict:
    """The loss's per-micro-batch sums (over micro-batches and ranks) -> per-token means."""
    tokens = metric_sum(metrics.pop("sum/tokens"))
    return {
        f"distill/{key[4:]}": metric_sum(metrics.pop(key)) / max(tokens, 1)
        for key in list(metrics)
        if key.startswith("sum/")
    }


class TeacherCollator:
    """verl's SFT collator for the usual keys; the teacher's (tokens, k) tensors as
    jagged (batch, tokens, k) nested tensors, the layout verl's distillation reads
    (verl's collator makes the last dimension the ragged one)."""

    KEYS = ("teacher_topk_ids", "teacher_topk_log_probs")

    def __init__(self, base):
        self.base = base

    def __call__(self, batch: list[dict]) -> dict:
        teacher = {key: [item.pop(key) for item in batch] for key in self.KEYS}
        out = self.base(batch)
        for key, tensors in teacher.items():
            out[key] = torch.nested.as_nested_tensor(tensors, layout=torch.jagged)
        return out


class DistillSFTTrainer(AgentSFTTrainer):
    def _build_dataloader(self):
        super()._build_dataloader()
        self.collate_fn = self.train_dataloader.collate_fn = TeacherCollator(self.collate_fn)
        if self.val_dataloader is not None:
            self.val_dataloader.collate_fn = self.collate_fn

    def _build_engine(self):
        super()._build_engine()
        self.loss_fn = partial(distill_loss, settings=settings_of(self.config))
        self.training_client.set_loss_fn(loss_fn=self.loss_fn)
        for name in ("train_batch", "infer_batch"):  # validation goes through infer_batch
            setattr(self.training_client, name, self._with_teacher(getattr(self.training_client, name)))

    @staticmethod
    def _with_teacher(call):
        def wrapped(data, *args, **kwargs):
            tu.assign_non_tensor(data, distillation_use_topk=True)
            output = call(data, *args, **kwargs)
            if output is not None and "metrics" in output.keys():
                metrics = tu.get(output, "metrics")
                if "sum/tokens" in metrics:
                    metrics.update(token_means(metrics))
            return output

        return wrapped


@hydra.main(config_path="config", config_name="distill", version_base=None)
def main(config):
    run(DistillSFTTrainer, config)


if __name__ == "__main__":
    main()
