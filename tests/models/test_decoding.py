"""The rollout's decoding: its KV cache, written in place, must hold exactly what a
concatenating cache holds, through growth of its buffer and rows leaving the batch; rows
of a batch decode as each would alone while finished ones linger and leave; and sampling
keeps the tokens transformers' temperature, top-k and top-p warpers keep."""

import pytest
import torch


def test_growing_cache_holds_what_was_appended_through_growth_and_row_selection():
    from afm_trainer.models.decoding import GrowingKVLayer

    layer = GrowingKVLayer(room=3)  # a small buffer: several growths in a few steps
    expected_keys = expected_values = None
    for step, new in enumerate([5, 1, 1, 1, 1, 4, 1, 1]):
        if step == 4:  # rows 0 and 2 of 4 go on
            rows = torch.tensor([0, 2])
            layer.batch_select_indices(rows)
            expected_keys, expected_values = expected_keys[rows], expected_values[rows]
        batch = 4 if step < 4 else 2
        keys, values = torch.randn(2, batch, 3, new, 8).unbind(0)
        got_keys, got_values = layer.update(keys, values)
        expected_keys = keys if expected_keys is None else torch.cat([expected_keys, keys], dim=2)
        expected_values = values if expected_values is None else torch.cat([expected_values, values], dim=2)
        assert torch.equal(got_keys, expected_keys) and torch.equal(got_values, expected_values)
        assert layer.get_seq_length() == expected_keys.shape[2]


def test_merged_caches_hold_both_batches_right_aligned_over_zeros():
    from afm_trainer.models.decoding import GrowingKVLayer

    for running_length, joining_length in [(5, 7), (7, 3)]:  # the joining rows longer, then shorter
        running, joining = GrowingKVLayer(room=2), GrowingKVLayer(room=2)
        running_keys, joining_keys = torch.randn(2, 3, running_length, 8), torch.randn(1, 3, joining_length, 8)
        running.update(running_keys, running_keys + 1)
        joining.update(joining_keys, joining_keys + 1)
        length = max(running_length, joining_length)
        running.merge(joining, length)
        assert running.keys.shape == (3, 3, length, 8) and running.get_seq_length() == length
        assert torch.equal(running.keys[:2, :, length - running_length :], running_keys)
        assert torch.equal(running.values[:2, :, length - running_length :], running_keys + 1)
        assert torch.equal(running.keys[2:, :, length - joining_length :], joining_keys)
        # the new left padding: zeros, never NaN
        assert not running.keys[:2, :, : length - running_length].any()
        assert not running.keys[2:, :, : length - joining_length].any()
        new = torch.randn(3, 3, 1, 8)
        keys, _ = running.update(new, new)  # decoding goes on in the merged buffer
        assert torch.equal(keys[:, :, length:], new) and torch.equal(
            keys[2:, :, length - joining_length : length], joining_keys
        )


# Continuous batching with rows finishing at different steps: a finished row stays in the
# cache until COMPACT_SHARE of the rows have finished (lazy removal), so only batches of
# more than 1 / COMPACT_SHARE rows ever hold a finished row. The reference decodes each
# row alone with transformers' own model and no cache, greedy.

PROMPT_LENGTHS = [3, 7, 1, 12, 5, 9, 2, 6, 4, 10]
MAX_TOKENS = [6, 2, 9, 4, 11, 3, 7, 5, 8, 1]  # every row ends at a different step


@pytest.fixture(scope="module")
def varied_model(nano_model, tmp_path_factory):
    """The nano model with its layers re-drawn large enough to outweigh the (tied) token
    embedding: a fresh model greedily repeats its last token, whatever the context."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(nano_model, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.model.layers.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 2 / parameter.shape[1] ** 0.5)
    path = str(tmp_path_factory.mktemp("models") / "varied")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(varied_model):
    """(the model decoding batches as the rollout loads it, transformers' plain model)."""
    from transformers import AutoModelForCausalLM

    from afm_trainer.models.decoding import load_decoding_model

    reference = AutoModelForCausalLM.from_pretrained(varied_model, dtype=torch.float32).eval()
    return load_decoding_model(varied_model), reference


def _prompts(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 4000, (n,), generator=generator).tolist() for n in lengths]


def _greedy(prompt, max_tokens):
    from afm_trainer.models.decoding import Request

    return Request(prompt_ids=list(prompt), max_tokens=max_tokens, temperature=0.0, want_logprobs=True)


@torch.no_grad()
def _alone(reference, prompt, max_tokens):
    """Greedy tokens and their log-probs for one row, the whole sequence recomputed each step."""
    ids, tokens, log_probs = list(prompt), [], []
    for _ in range(max_tokens):
        logits = reference(input_ids=torch.tensor([ids])).logits[0, -1]
        best, second = logits.topk(2).values
        assert best - second > 1e-4, "a near tie: the batch's rounding could pick the other token"
        token = int(logits.argmax())
        tokens.append(token)
        log_probs.append(float(torch.log_softmax(logits, -1)[token]))
        ids.append(token)
    return tokens, log_probs


def _assert_decoded_alone(out, reference, prompt, max_tokens):
    tokens, log_probs = _alone(reference, prompt, max_tokens)
    assert out["token_ids"] == tokens
    assert out["log_probs"] == pytest.approx(log_probs, abs=1e-4)
    assert out["stop_reason"] == "completed"


def test_ten_rows_finishing_at_different_steps_decode_as_each_would_alone(models):
    from afm_trainer.models.decoding import decode_batch

    model, reference = models
    prompts = _prompts(PROMPT_LENGTHS)
    outputs = decode_batch(model, [_greedy(p, n) for p, n in zip(prompts, MAX_TOKENS)])
    assert [len(out["token_ids"]) for out in outputs] == MAX_TOKENS
    for out, prompt, max_tokens in zip(outputs, prompts, MAX_TOKENS):
        _assert_decoded_alone(out, reference, prompt, max_tokens)


def test_finished_rows_leave_the_cache_once_they_are_its_compact_share_and_a_join_after_them_decodes_alone(models):
    """Step by step: a finished row may linger in the cache (decoded for nothing, its
    tokens never kept) only while fewer than COMPACT_SHARE of the rows have finished;
    requests joining while finished rows linger decode as they would alone."""
    from afm_trainer.models.decoding import COMPACT_SHARE, RunningBatch

    model, reference = models
    prompts = _prompts(PROMPT_LENGTHS)
    joining_prompts = _prompts([8, 2, 5], seed=1)
    joining_max_tokens = [5, 9, 3]
    requests = [_greedy(p, n) for p, n in zip(prompts, MAX_TOKENS)]
    joining = [_greedy(p, n) for p, n in zip(joining_prompts, joining_max_tokens)]
    batch = RunningBatch(model)
    batch.admit(requests)
    finished, lingered, joined = {}, 0, False
    while batch.live:
        for request, out in batch.step():
            finished[id(request)] = out
        if batch.rows:
            assert len(batch.done) < COMPACT_SHARE * len(batch.rows)  # else they should have left
            assert all(layer.keys.shape[0] == len(batch.rows) for layer in batch.cache.layers)
            assert batch.mask.shape[0] == batch.logits.shape[0] == len(batch.rows)
        else:
            assert batch.cache is None
        assert len(batch.live) + len(finished) == len(requests) + (len(joining) if joined else 0)
        lingered += len(batch.done)
        if len(batch.done) >= 2 and not joined:  # the join must first leave the finished rows behind
            batch.admit(joining)
            joined = True
            assert not batch.done and len(batch.rows) == len(batch.live)
    assert lingered > 0, "no finished row ever stayed in the cache: the lazy removal never ran"
    assert joined and not batch.rows
    for request, prompt, max_tokens in zip(
        requests + joining, prompts + joining_prompts, MAX_TOKENS + joining_max_tokens
    ):
        _assert_decoded_alone(finished[id(request)], reference, prompt, max_tokens)


# Top-k / top-p (nucleus) filtering, against transformers' own warpers, applied in
# transformers' order: temperature, top-k, top-p.


def _warped(logits, temperature=1.0, top_k=-1, top_p=1.0):
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores = logits[None].float().clone()
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k > 0:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores[0]


TOP_PS = [1e-6, 0.05, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999999, 1.0]


def test_top_p_keeps_exactly_the_tokens_transformers_top_p_warper_keeps():
    from afm_trainer.models.decoding import _filter_logits

    generator = torch.Generator().manual_seed(0)
    checked = 0
    for trial in range(300):
        vocab = int(torch.randint(2, 200, (), generator=generator))
        spread = float(torch.rand((), generator=generator)) * 8 + 0.05  # from near-uniform to peaked
        logits = torch.randn(vocab, generator=generator) * spread
        if trial % 4 == 0:
            logits[torch.randperm(vocab, generator=generator)[: vocab // 3]] = float("-inf")  # masked tokens
            logits[int(torch.randint(vocab, (), generator=generator))] = 0.0  # at least one left
        if len(set(logits[torch.isfinite(logits)].tolist())) < int(torch.isfinite(logits).sum()):
            continue  # ties: test_top_p_with_tied_logits_...
        for top_p in TOP_PS:
            for top_k in (-1, 1, 3, 20):
                kept = torch.isfinite(_filter_logits(logits, top_k, top_p))
                expected = torch.isfinite(_warped(logits, top_k=top_k, top_p=top_p))
                assert torch.equal(kept, expected), (trial, top_k, top_p, kept.sum(), expected.sum())
                checked += 1
    assert checked > 10000


def test_top_p_over_a_full_size_vocabulary_keeps_the_tail_transformers_keeps():
    """A real model's vocabulary (Qwen2's 151,936 tokens): float32 softmax sums to 1 only
    within ~1e-5 there, more than thousands of tail tokens weigh, so the cut must not
    compare running sums with top_p as if the total were exactly 1."""
    from afm_trainer.models.decoding import _filter_logits

    generator = torch.Generator().manual_seed(3)
    for spread in (2.0, 3.0):
        logits = torch.randn(151936, generator=generator) * spread
        for top_p in (0.95, 0.99, 0.999):
            kept = torch.isfinite(_filter_logits(logits, -1, top_p))
            expected = torch.isfinite(_warped(logits, top_p=top_p))
            assert torch.equal(kept, expected), (spread, top_p, int(kept.sum()), int(expected.sum()))


def test_top_p_with_tied_logits_keeps_as_many_of_each_value_as_transformers():
    """Which of several tied tokens straddling the boundary stays is arbitrary (sort
    order), in transformers too: the kept logits must be the same multiset, every token
    above a kept one kept too. Tied probabilities add up to top_p exactly when top_p is a
    simple fraction (3/15 = 0.2), where float rounding decides: top_p is an odd value here,
    the exact boundary is the dyadic test's."""
    from afm_trainer.models.decoding import _filter_logits

    generator = torch.Generator().manual_seed(1)
    for trial in range(300):
        vocab = int(torch.randint(2, 60, (), generator=generator))
        logits = torch.randint(-4, 3, (vocab,), generator=generator).float() * (0.5 + trial % 3)
        for top_p in (1e-6, 0.013, 0.123, 0.377, 0.61, 0.83, 0.911, 0.987, 0.999999):
            for top_k in (-1, 2, 7):
                filtered, expected = _filter_logits(logits, top_k, top_p), _warped(logits, top_k=top_k, top_p=top_p)
                kept = torch.isfinite(filtered)
                assert torch.equal(logits[kept].sort().values, logits[torch.isfinite(expected)].sort().values), (
                    trial,
                    top_k,
                    top_p,
                )
                if not kept.all():  # the likeliest tokens, whatever else
                    assert logits[~kept].max() <= logits[kept].min()
                assert torch.equal(filtered[kept], logits[kept])  # kept logits are left as they were


# probabilities 1/2, 1/4, ..., 1/64, 1/64: their softmax and cumulative sums are exact
DYADIC = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.015625]).log()


def test_top_p_keeps_the_token_that_reaches_top_p_exactly_and_no_more():
    """The boundary: the smallest set of most likely tokens whose probability reaches
    top_p. At top_p = 1/2 + 1/4 the two first tokens reach it exactly: the third is out."""
    from afm_trainer.models.decoding import _filter_logits

    order = torch.tensor([3, 0, 6, 1, 5, 2, 4])  # not sorted: the filter must put its cut back in place
    logits = torch.empty(7).scatter_(0, order, DYADIC)
    for top_p, count in [
        (0.5, 1),
        (0.5 + 1e-6, 2),
        (0.75 - 1e-6, 2),
        (0.75, 2),
        (0.75 + 1e-6, 3),
        (0.875, 3),
        (0.9375, 4),
        (0.96875, 5),
        (0.99, 7),
        (1e-6, 1),
    ]:
        kept = torch.isfinite(_filter_logits(logits, -1, top_p))
        assert torch.equal(kept, torch.isfinite(_warped(logits, top_p=top_p))), top_p
        assert torch.equal(kept, torch.isin(torch.arange(7), order[:count])), top_p  # the `count` likeliest
        # top-k first, then top-p over what is left, renormalised (transformers' order)
        kept = torch.isfinite(_filter_logits(logits, 2, top_p))
        assert torch.equal(kept, torch.isfinite(_warped(logits, top_k=2, top_p=top_p))), top_p


class _FixedLogits(torch.nn.Module):
    """A stand-in for a causal LM: every step, row i's next-token logits are ``table[i]``
    (the rows all end together, so row i stays row i)."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, input_ids, **kwargs):
        from types import SimpleNamespace

        rows, width = input_ids.shape
        return SimpleNamespace(logits=self.table[:rows, None].expand(rows, width, -1))


def test_sampled_tokens_follow_transformers_temperature_top_k_and_top_p(monkeypatch):
    """The decoding step samples each row from softmax of its warped logits: the
    distribution handed to the sampler is transformers' one, and no token it drops is drawn."""
    import afm_trainer.models.decoding as decoding

    generator = torch.Generator().manual_seed(2)
    random = torch.randn(3, 7, generator=generator) * 2
    rows = [  # (logits, temperature, top_k, top_p)
        (DYADIC, 1.0, -1, 0.5),  # only the likeliest token: the second reaches top_p exactly
        (2 * DYADIC.flip(0), 2.0, -1, 0.75),  # the dyadic ones again once divided by the temperature
        (random[0], 0.7, 4, 0.9),
        (random[1], 1.3, -1, 0.6),
        (random[2], 0.0, -1, 0.3),  # greedy: top-p plays no part
        (DYADIC, 1.0, -1, 1.0),  # nothing filtered
    ]
    steps = 300
    requests = [
        decoding.Request(
            prompt_ids=[1, 2, 3][: i % 3 + 1],
            max_tokens=steps,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=torch.Generator().manual_seed(i),
        )
        for i, (_, temperature, top_k, top_p) in enumerate(rows)
    ]
    handed = []
    sample_rows = decoding.sample_rows
    monkeypatch.setattr(decoding, "sample_rows", lambda probs, u: handed.append(probs.clone()) or sample_rows(probs, u))
    outputs = decoding.decode_batch(_FixedLogits(torch.stack([row[0] for row in rows])), requests)
    assert len(handed) == steps
    for i, ((logits, temperature, top_k, top_p), out) in enumerate(zip(rows, outputs)):
        tokens = torch.tensor(out["token_ids"])
        assert len(tokens) == steps
        if temperature <= 0:
            assert (tokens == logits.argmax()).all()
            continue
        expected = torch.softmax(_warped(logits, temperature, top_k, top_p), -1)
        for probs in handed:
            assert torch.allclose(probs[i].float(), expected, atol=1e-6), (i, probs[i], expected)
        drawn = torch.bincount(tokens, minlength=7)
        assert (drawn[expected == 0] == 0).all(), i  # nothing outside the nucleus
        assert (drawn > 0).sum() > 1 or (expected > 0).sum() == 1, i  # and sampled, not argmax
