"""Per-pair preference losses of the DPO trainer, as pure torch functions.

Inputs are 1-D float tensors of length P, one entry per (chosen, rejected) pair: the
*summed* log-probability of each response's tokens under the policy and the reference,
``pc, pr, rc, rr``. With the log-ratios ``r_c = pc - rc``, ``r_r = pr - rr`` and their
gap ``h = r_c - r_r``, and ``ls`` the label smoothing:

- ``sigmoid``: DPO (Rafailov et al. 2023, arXiv 2305.18290) with TRL's ``sigmoid`` label
  smoothing, the conservative DPO (cDPO) of Mitchell's note on noisy preferences:
  ``z = beta * h``, ``loss = -(1 - ls) * logsigmoid(z) - ls * logsigmoid(-z)``.
- ``ipo``: IPO (Azar et al. 2023, arXiv 2310.12036), the paper's formula on summed
  log-ratios: ``loss = (h - 1 / (2 * beta)) ** 2``. TRL's ``ipo`` instead averages the
  log-probs per token, so its beta is on another scale. No label smoothing.
- ``cal_dpo``: Cal-DPO (Xiao et al. 2024, arXiv 2412.14516), as in the authors' code:
  ``loss = -logsigmoid(r_c - r_r) + 0.5 * ((r_c - 1/(2 beta))**2 + (r_r + 1/(2 beta))**2)``.
  The log-ratios are not multiplied by beta; beta only sets the calibration targets
  +-1/(2 beta). No label smoothing.
- ``dr_dpo``: Dr-DPO (Wu et al. 2024, arXiv 2407.07880). Per pair it is the ``sigmoid``
  loss; the method is in how the batch is combined: ``dr_dpo_objective`` is
  ``-beta' * log(mean(exp(-loss / beta')))``, over the pairs passed in (the trainer
  passes one micro-batch, as the authors' code takes one local batch).
- ``sigmoid_centred``: seed 004's heuristic (a project document calls it "Cal-DPO"; it is
  a different method from the Cal-DPO paper): the ``sigmoid`` loss of
  ``z = beta * (h - mean(h))``, the mean taken over the pairs passed in.

Also: ``keep_mask_drop_top`` (seed 004's "Dr-DPO" heuristic: drop the top fraction of pairs
by a disagreement score), ``nll_per_pair`` (an SFT term on the chosen response, as
OpenRLHF's ``nll_loss_coef`` and LLaMA-Factory's ``pref_ftx``) and ``pair_metrics``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "cal_dpo", "dr_dpo", "sigmoid_centred")


def _smoothed_sigmoid(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    # cDPO: the preference label is taken as flipped with probability ls.
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def pair_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    loss_type: str,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair loss, shape [P]."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; known: {', '.join(LOSS_TYPES)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    if label_smoothing and loss_type in ("ipo", "cal_dpo"):
        raise ValueError(f"label_smoothing must be 0 for {loss_type}, got {label_smoothing}")
    shape = policy_chosen.shape
    if len(shape) != 1 or any(t.shape != shape for t in (policy_rejected, ref_chosen, ref_rejected)):
        raise ValueError("the four log-prob tensors must be 1-D and of equal length")

    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    gap = chosen_ratio - rejected_ratio
    if loss_type in ("sigmoid", "dr_dpo"):
        return _smoothed_sigmoid(beta * gap, label_smoothing)
    if loss_type == "sigmoid_centred":
        # The batch mean only shifts every pair's margin; detached so it is not a gradient path.
        return _smoothed_sigmoid(beta * (gap - gap.mean().detach()), label_smoothing)
    target = 1 / (2 * beta)
    if loss_type == "ipo":
        return (gap - target) ** 2
    # cal_dpo: push the log-ratios themselves to +-target, not only their gap.
    return -F.logsigmoid(gap) + 0.5 * ((chosen_ratio - target) ** 2 + (rejected_ratio + target) ** 2)


def dr_dpo_objective(losses: torch.Tensor, beta_prime: float) -> torch.Tensor:
    """Dr-DPO's batch objective: -beta' * log(mean(exp(-losses / beta'))), a scalar (computed stably with logsumexp)."""
    if not beta_prime > 0:
        raise ValueError(f"beta_prime must be > 0, got {beta_prime}")
    return -beta_prime * (torch.logsumexp(-losses / beta_prime, dim=0) - math.log(losses.numel()))


def keep_mask_drop_top(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool mask [P] that drops the floor(fraction * P) pairs with the largest scores (seed 004's 'Dr-DPO'
    heuristic: drop the top fraction of pairs by a disagreement score; the trainer uses each pair's current
    sigmoid loss as that score). fraction in [0, 1); 0 keeps all. Ties broken by position (stable): of equal
    scores, the later pair is dropped first."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    # The small epsilon keeps float error from dropping one pair too few (0.29 * 100 = 28.999...).
    drop = math.floor(fraction * scores.numel() + 1e-9)
    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if drop:
        order = torch.argsort(scores.detach(), stable=True)  # ascending; equal scores stay in position order
        keep[order[scores.numel() - drop :]] = False
    return keep


def nll_per_pair(policy_chosen: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """SFT term on the chosen response, per pair: -policy_chosen / chosen_tokens (mean token NLL, as OpenRLHF's
    nll_loss_coef and LLaMA-Factory's pref_ftx use)."""
    # A response with no trained tokens has a summed log-prob of 0: count it as 0, not 0/0.
    return -policy_chosen / chosen_tokens.to(policy_chosen.dtype).clamp_min(1)


def pair_metrics(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> dict[str, torch.Tensor]:
    """Per-pair values for logging (each [P], detached): 'rewards/chosen' = beta*(pc-rc), 'rewards/rejected' =
    beta*(pr-rr), 'rewards/margin' = their difference, 'rewards/accuracy' = float(margin > 0), 'logratio/chosen'
    = pc-rc, 'logratio/rejected' = pr-rr (Cal-DPO's calibration targets them to +1/(2*beta) and -1/(2*beta)),
    'logps/chosen' = pc, 'logps/rejected' = pr."""
    pc, pr = policy_chosen.detach(), policy_rejected.detach()
    chosen_ratio, rejected_ratio = pc - ref_chosen.detach(), pr - ref_rejected.detach()
    margin = beta * chosen_ratio - beta * rejected_ratio
    return {
        "rewards/chosen": beta * chosen_ratio,
        "rewards/rejected": beta * rejected_ratio,
        "rewards/margin": margin,
        "rewards/accuracy": (margin > 0).to(pc.dtype),
        "logratio/chosen": chosen_ratio,
        "logratio/rejected": rejected_ratio,
        "logps/chosen": pc,
        "logps/rejected": pr,
    }
