"""Seed 001's distillation loss, ``alpha * CE(student, labels) + beta * D(teacher, student)``,
against a teacher's top-k token distribution stored with the data.

The teacher's distribution at each position is known on its top-k tokens only. Both
distributions are compared on k + 1 outcomes: the k tokens, and "any other token" with
the probability left over (1 - the top-k mass). That is an exact divergence between
two distributions (never negative, unlike a sum over the top-k alone), and it still
pushes the student's mass off tokens outside the teacher's top-k.

D is one of (TRL's ``GKDTrainer`` names them by its ``beta``: 0 forward, 1 reverse):
- ``forward_kl``: KL(teacher || student), mass-covering (the default, as verl's
  ``forward_kl_topk`` and seed 001's KL);
- ``reverse_kl``: KL(student || teacher), mode-seeking;
- ``jsd``: the generalised Jensen-Shannon divergence with mixture
  m = jsd_beta * teacher + (1 - jsd_beta) * student, as TRL's ``generalized_jsd_loss``:
  jsd_beta * KL(teacher || m) + (1 - jsd_beta) * KL(student || m).
The student's logits are divided by ``temperature`` first; the teacher's log-probs were
computed at the same temperature when they were stored (the data records it).
"""

from __future__ import annotations

import math

import torch

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def with_tail(topk_log_probs: torch.Tensor) -> torch.Tensor:
    """(..., k) log-probs of k tokens -> (..., k + 1): the tokens, then "any other token"."""
    mass = torch.logsumexp(topk_log_probs, dim=-1, keepdim=True).clamp(max=0.0)
    # log(1 - exp(mass)), stable near 0; the floor keeps a top-k holding all the mass finite
    tail = torch.log((-torch.expm1(mass)).clamp(min=1e-12))
    return torch.cat([topk_log_probs, tail], dim=-1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension, from log-probs."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def token_divergence(
    student_topk_log_probs: torch.Tensor,
    teacher_topk_log_probs: torch.Tensor,
    divergence: str = "forward_kl",
    jsd_beta: float = 0.5,
) -> torch.Tensor:
    """Per position, the divergence between teacher and student on the teacher's top-k
    tokens plus the tail; inputs (..., k) log-probs of the same token ids, output (...)."""
    s, t = with_tail(student_topk_log_probs.float()), with_tail(teacher_topk_log_probs.float())
    if divergence == "forward_kl":
        return _kl(t, s)
    if divergence == "reverse_kl":
        return _kl(s, t)
    if divergence == "jsd":
        if not 0.0 < jsd_beta < 1.0:
            raise ValueError(f"jsd_beta must be strictly between 0 and 1, got {jsd_beta}")
        m = torch.logsumexp(torch.stack([t + math.log(jsd_beta), s + math.log(1 - jsd_beta)]), dim=0)
        return jsd_beta * _kl(t, m) + (1 - jsd_beta) * _kl(s, m)
    raise ValueError(f"unknown divergence {divergence!r} (one of {', '.join(DIVERGENCES)})")


def student_topk_log_probs(student_logits: torch.Tensor, topk_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature) at ``topk_ids``: (..., V), (..., k) -> (..., k)."""
    logits = student_logits.float() / temperature
    return logits.gather(-1, topk_ids) - torch.logsumexp(logits, dim=-1, keepdim=True)
