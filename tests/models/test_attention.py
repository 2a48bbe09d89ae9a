"""attn_implementation="sdpa_varlen": no dense mask where causality already hides the
padding or where packed samples can be attended one by one, and results on real tokens
are those of plain SDPA."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from afm_trainer.models.attention import NAME, is_right_padded, sample_spans


def _pair():
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    # Each its own config: from_config records the attention implementation on the one passed.
    reference = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="sdpa").eval()
    fast = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=NAME).eval()
    assert (reference.config._attn_implementation, fast.config._attn_implementation) == ("sdpa", NAME)
    fast.load_state_dict(reference.state_dict())
    return reference, fast


def test_is_right_padded():
    assert is_right_padded(torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert not is_right_padded(torch.tensor([[0, 1, 1]]))  # left padding
    assert not is_right_padded(torch.tensor([[1, 0, 1]]))  # a hole


@pytest.mark.parametrize("padding", ["right", "left"])
def test_same_logits_as_sdpa_on_every_real_token(padding):
    reference, fast = _pair()
    ids = torch.randint(1, 64, (3, 10))
    mask = torch.ones_like(ids)
    for row, length in enumerate([10, 6, 3]):
        if padding == "right":
            mask[row, length:] = 0
        else:
            mask[row, : 10 - length] = 0
    with torch.no_grad():
        a = reference(input_ids=ids, attention_mask=mask).logits
        b = fast(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.allclose(a[real], b[real], atol=1e-5)


def test_packed_rows_keep_their_block_mask():
    reference, fast = _pair()
    ids = torch.randint(1, 64, (1, 8))
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])  # two samples in one row, as verl packs them (no KV cache)
    with torch.no_grad():
        a = reference(input_ids=ids, position_ids=position_ids, use_cache=False).logits
        b = fast(input_ids=ids, position_ids=position_ids, use_cache=False).logits
    assert torch.allclose(a, b, atol=1e-5)
    # ...and the second sample really is kept apart from the first.
    with torch.no_grad():
        alone = reference(input_ids=ids[:, 4:], position_ids=position_ids[:, 4:], use_cache=False).logits
    assert torch.allclose(b[:, 4:], alone, atol=1e-5)


def test_sample_spans_follow_position_restarts():
    assert sample_spans(torch.tensor([[0, 1, 2, 0, 1, 0]])) == [[(0, 3), (3, 5), (5, 6)]]
    assert sample_spans(torch.tensor([[5, 6, 7]])) == [[(0, 3)]]  # one sample, offset positions


def test_packed_rows_train_like_separate_samples_without_a_dense_mask(monkeypatch):
    reference, fast = _pair()
    lengths = [5, 2, 7]
    samples = [torch.randint(1, 64, (1, n)) for n in lengths]
    ids = torch.cat(samples, dim=1)
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    masks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, attn_mask=None, **kwargs):
        masks.append(attn_mask)
        return sdpa(*args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    packed_logits = fast(input_ids=ids, position_ids=position_ids, use_cache=False).logits[0]
    assert masks and all(m is None for m in masks)  # no block-diagonal mask over the row
    # Same logits and gradients as the samples one at a time.
    spans = torch.cumsum(torch.tensor([0] + lengths), 0).tolist()
    separate_logits = torch.cat([reference(input_ids=x, use_cache=False).logits[0] for x in samples])
    assert torch.allclose(packed_logits, separate_logits, atol=1e-5)

    def within_sample_loss(logits):
        return sum(
            torch.nn.functional.cross_entropy(logits[s : e - 1], ids[0, s + 1 : e], reduction="sum")
            for s, e in zip(spans, spans[1:])
        )

    within_sample_loss(packed_logits).backward()
    within_sample_loss(separate_logits).backward()
    for (name, a), b in zip(reference.named_parameters(), fast.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-4), name


def test_greedy_generation_with_left_padding_matches_sdpa():
    reference, fast = _pair()
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(reference.generate(ids, **kwargs), fast.generate(ids, **kwargs))


def test_decoding_step_with_a_padded_cache_matches_sdpa_without_copying_the_cache(monkeypatch):
    """A decoding step (one token per row, left-padded cache) gives plain SDPA's logits,
    and the grouped-query cache is read as it is, not copied once per query head."""
    from transformers import DynamicCache
    from transformers.integrations import sdpa_attention

    reference, fast = _pair()
    with torch.no_grad():  # sharp attention, so that a head reading the wrong cache shows
        for name, weight in reference.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                weight.mul_(30)
    fast.load_state_dict(reference.state_dict())
    ids = torch.tensor([[0, 0, 0, 5, 6, 7], [1, 2, 3, 4, 5, 9]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    step_logits = []
    for model in (reference, fast):
        cache = DynamicCache()
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
            copies = []
            if model is fast:
                monkeypatch.setattr(
                    sdpa_attention,
                    "repeat_kv",
                    lambda *a, copies=copies: copies.append(1) or pytest.fail("cache copied"),
                )
            out = model(
                input_ids=torch.tensor([[11], [12]]),
                attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1),
                position_ids=positions[:, -1:] + 1,
                past_key_values=cache,
                use_cache=True,
            )
        step_logits.append(out.logits[:, -1])
    assert torch.allclose(step_logits[0], step_logits[1], atol=1e-5)
