"""`attn_implementation="sdpa_varlen"`: PyTorch SDPA over variable-length samples without
the dense masks transformers builds for them on CPU.

FlashAttention's varlen kernels, which keep samples apart on GPUs, do not exist on CPU.
There transformers describes the two layouts of a training batch with a dense 4-D mask,
which sends SDPA to its slow masked path:

- right-padded rows: every pad token comes after every real token of its row, so the
  causal mask alone keeps real tokens from attending to padding (the pad positions' own
  outputs are never in the loss). The mask is dropped.
- packed rows (verl's `use_remove_padding=true`: the samples of a micro-batch
  concatenated into one row, positions restarting at 0 for each): the block-diagonal
  mask over the whole row costs the square of the row's length. Here each sample is a
  separate causal SDPA call over its own span, found from the position ids the way
  transformers finds it; no token of the row is padding, so the linear layers do no
  wasted work either.

Decoding (one new token per row against a cache, the rollout's inner loop) keeps the
standard SDPA mask, which left padding needs, but not transformers' way of serving a
grouped-query model with a mask: repeat_kv copies the whole cache once per query head
of a group, every layer and every token. Here the query heads sharing a key/value head are passed
as that head's query rows instead; SDPA then reads the cache as it is.

Registered through transformers' own attention and mask registries. Everything else
keeps the standard SDPA mask: left padding (generation), sliding windows.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_varlen"


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """True when every row is ones then zeros (no hole, no left padding)."""
    mask = attention_mask.to(torch.int32)
    return bool((mask.cumprod(dim=-1) == mask).all())


def sample_spans(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """(start, end) of each sample in each row: a sample starts where the position does
    not continue the previous one (transformers' `find_packed_sequence_indices` rule)."""
    if position_ids.dim() == 3:  # multimodal rope (3, batch, length): the first axis counts text
        position_ids = position_ids[0]
    length = position_ids.shape[-1]
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] - position_ids[:, :-1] != 1
    spans = []
    for row in starts:
        bounds = row.nonzero().flatten().tolist() + [length]
        spans.append(list(zip(bounds[:-1], bounds[1:])))
    return spans


def varlen_causal_mask(*args, attention_mask=None, allow_is_causal_skip=True, **kwargs):
    """No mask (causal only, samples apart by `varlen_sdpa_forward`) for a full-length
    forward over right-padded or packed rows; the standard SDPA mask otherwise."""
    q_length, kv_length = kwargs.get("q_length"), kwargs.get("kv_length")
    full_length = q_length == kv_length and kwargs.get("kv_offset", 0) == 0 and kwargs.get("local_size") is None
    if full_length and attention_mask is None:
        return None  # one sample a row, or packed rows
    if (
        full_length
        and allow_is_causal_skip  # False for custom mask functions and compiled caches
        and attention_mask.dim() == 2
        and q_length == attention_mask.shape[-1]
        and is_right_padded(attention_mask)
    ):
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, allow_is_causal_skip=allow_is_causal_skip, **kwargs)


def grouped_decode_sdpa(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """One query token per row, (batch, heads, 1, dim), against an uncopied cache
    (batch, kv_heads, length, dim): query head h belongs to key/value head h // groups
    (repeat_kv's order), so the heads of a group become that head's query rows."""
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    # The mask, (batch, 1, 1, length), is the same for every head and broadcasts.
    out = torch.nn.functional.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def varlen_sdpa_forward(module, query, key, value, attention_mask, position_ids=None, **kwargs):
    """SDPA; when rows hold several samples (and no mask), one causal call per sample;
    a decoding step of a grouped-query model without copying the cache per head."""
    groups = getattr(module, "num_key_value_groups", 1)
    if query.shape[2] == 1 and groups > 1 and not module.training and key.shape[1] * groups == query.shape[1]:
        return grouped_decode_sdpa(module, query, key, value, attention_mask, scaling=kwargs.get("scaling"))
    if attention_mask is None and position_ids is not None and query.shape[2] == key.shape[2] > 1:
        spans = sample_spans(position_ids)
        if any(len(row) > 1 for row in spans):
            rows = []
            for b, row in enumerate(spans):
                # split, not a slice per sample: a slice's backward writes its gradient
                # into a zeroed tensor of the whole row, once per sample and tensor.
                lengths = [e - s for s, e in row]
                parts = zip(*(t[b : b + 1].split(lengths, dim=2) for t in (query, key, value)))
                outputs = [sdpa_attention_forward(module, q, k, v, None, **kwargs)[0] for q, k, v in parts]
                rows.append(torch.cat(outputs, dim=1))  # (1, length, heads, head_dim)
            return torch.cat(rows, dim=0), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(NAME, varlen_sdpa_forward)
AttentionMaskInterface.register(NAME, varlen_causal_mask)
