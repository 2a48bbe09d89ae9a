"""Batched decoding with a KV cache for a Hugging Face causal LM, each row with its own
sampling parameters: the CPU rollout's engine (``verl_ext/cpu_rollout.py``) and the
evaluation's greedy answers (``eval/lm.py``).

A finished row leaves the batch and the cache; the cache is written in place
(``GrowingKVLayer``); a model loaded with ``load_decoding_model`` decodes a grouped-query
model without copying the cache per head (``models/attention.py``) and multiplies with
packed weights on CPU (``models/cpu_linear.py``).
``benchmarks/bench_rollout.py`` times it against transformers' ``generate`` and vLLM.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, DynamicLayer

from afm_trainer.models.attention import NAME as ATTENTION
from afm_trainer.models.cpu_linear import pack_linear_layers


def load_decoding_model(path: str, dtype: torch.dtype = torch.float32):
    """A HF causal LM ready to decode: in eval mode, with the rollout's attention and, on
    CPU, its linear layers packed for oneDNN (re-packed by themselves when weights change)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=ATTENTION).eval()
    return pack_linear_layers(model)


class GrowingKVLayer(DynamicLayer):
    """A layer's keys and values as views into a buffer with room to spare: a decoding
    step writes its token into the next slot. transformers' DynamicLayer concatenates,
    copying the layer's whole cache at every step, which made most of a rollout's time.
    The buffer doubles when full (amortised: each token is copied O(1) times)."""

    def __init__(self, room: int = 128):
        super().__init__()
        self.room, self.length = room, 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if not self.is_initialized:
            self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True
            self.key_buffer, self.value_buffer = (
                x.new_empty((*x.shape[:2], end + self.room, x.shape[3])) for x in (key_states, value_states)
            )
        elif end > self.key_buffer.shape[2]:
            capacity = max(end, 2 * self.key_buffer.shape[2])
            self.key_buffer, self.value_buffer = (
                torch.cat([x[:, :, : self.length], x.new_empty((*x.shape[:2], capacity - self.length, x.shape[3]))], 2)
                for x in (self.key_buffer, self.value_buffer)
            )
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
            self.keys, self.values = self.key_buffer[:, :, : self.length], self.value_buffer[:, :, : self.length]

    def merge(self, other: GrowingKVLayer, length: int) -> None:
        """Append ``other``'s rows below these, both right-aligned at ``length`` (at least
        either's length). The new left padding is zeros, which the mask hides: uninitialised
        memory may hold NaN, which a zero attention weight does not cancel."""

        def stacked(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
            rows = mine.shape[0]
            out = mine.new_zeros((rows + theirs.shape[0], mine.shape[1], length + self.room, mine.shape[3]))
            out[:rows, :, length - self.length : length] = mine[:, :, : self.length]
            out[rows:, :, length - other.length : length] = theirs[:, :, : other.length]
            return out

        self.key_buffer = stacked(self.key_buffer, other.key_buffer)
        self.value_buffer = stacked(self.value_buffer, other.value_buffer)
        self.length = length
        self.keys, self.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("GrowingKVLayer is append-only")


def growing_kv_cache() -> Cache:
    """A cache of GrowingKVLayer, one added per attention layer as the model first uses it."""
    return Cache(layer_class_to_replicate=GrowingKVLayer)


@dataclass
class Request:
    """One prompt to continue; temperature <= 0 is greedy (no generator needed)."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_k: int = -1
    top_p: float = 1.0
    want_logprobs: bool = False
    stop_ids: set[int] = field(default_factory=set)
    generator: torch.Generator | None = None  # the request's own random stream
    future: asyncio.Future | None = field(default=None, repr=False)  # the rollout server's reply


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then nucleus filtering of one row of logits (-inf outside)."""
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        # Summed in float64, against top_p of their own sum: over a vocabulary of 150k, float32
        # softmax's total is off 1 by more than the tail's mass (top_p = 0.99 dropped tokens).
        probs = torch.softmax(sorted_logits, -1).double()
        cumulative = probs.cumsum(-1)
        drop = cumulative - probs >= top_p * cumulative[-1]  # keep the token that crosses top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def sample_rows(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row by inverse CDF: the first token whose cumulative probability
    exceeds u * total, u uniform in [0, 1). Exact, never picks a zero-probability token,
    and batched, where torch.multinomial goes row by row."""
    cdf = probs.double().cumsum(-1)
    tokens = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True)
    last = torch.searchsorted(
        cdf, cdf[:, -1:].contiguous()
    )  # the last token with probability > 0, should u * total round up
    return torch.minimum(tokens, last)[:, 0]


COMPACT_SHARE = 0.25  # finished rows leave the cache once they are this share of its rows


def _pad_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([mask.new_zeros((mask.shape[0], width - mask.shape[1])), mask], dim=1)


class RunningBatch:
    """Rows decoding together with one KV cache, each with its own sampling parameters;
    requests join between steps (prefilled as a left-padded batch of their own, then
    merged into the cache) and are answered as soon as they finish: the CPU rollout's
    continuous batching, where a multi-turn agent's next turn joins the running batch
    instead of waiting for its longest answer. ``decode_batch`` is one batch, start to end.

    Log-probs are those of the sampled token under softmax(logits / temperature), the
    distribution verl's actor recomputes (top-k/top-p cut the sampling, not the log-prob).
    pad_id fills the left padding, which the mask hides (any token id will do).
    """

    def __init__(self, model, pad_id: int = 0):
        self.model, self.pad_id = model, pad_id
        self.rows: list[Request] = []  # the request behind each row of the cache
        self.outputs: list[dict] = []  # each row's output so far
        self.done: set[int] = set()  # rows finished but still in the cache (see step)
        self.steps = 0  # decoding steps so far
        self.cache = self.mask = self.positions = self.logits = None
        self.temperatures = torch.ones(0)
        self.greedy = torch.zeros(0, dtype=torch.bool)

    @torch.no_grad()
    def admit(self, requests: list[Request]) -> int:
        """Prefill ``requests`` and add them as rows; returns the prefill's padded tokens."""
        if self.done:  # the join copies the cache anyway: leave the finished rows behind first
            self._drop_finished()
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for row, r in enumerate(requests):
            ids[row, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[row, width - len(r.prompt_ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = growing_kv_cache()
        logits = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,  # the next token's only: the prompt's other logits would cost a quarter of a prefill
        ).logits[:, -1]
        # Greedy rows (temperature <= 0) score their token under the plain softmax.
        temperatures = torch.tensor([r.temperature if r.temperature > 0 else 1.0 for r in requests])
        greedy = torch.tensor([r.temperature <= 0 for r in requests])
        if not self.rows:
            self.cache, self.mask, self.positions, self.logits = cache, mask, positions[:, -1:], logits
            self.temperatures, self.greedy = temperatures, greedy
        else:
            length = max(self.mask.shape[1], width)
            for mine, theirs in zip(self.cache.layers, cache.layers):
                mine.merge(theirs, length)
            self.mask = torch.cat([_pad_left(self.mask, length), _pad_left(mask, length)])
            self.positions = torch.cat([self.positions, positions[:, -1:]])
            self.logits = torch.cat([self.logits, logits])
            self.temperatures = torch.cat([self.temperatures, temperatures])
            self.greedy = torch.cat([self.greedy, greedy])
        self.rows += requests
        self.outputs += [{"token_ids": [], "log_probs": [], "stop_reason": None} for _ in requests]
        return ids.numel()

    @torch.no_grad()
    def step(self) -> list[tuple[Request, dict]]:
        """One token for every row; returns the requests that finished, with their outputs."""
        self.steps += 1
        scaled = self.logits.float() / self.temperatures[:, None]
        log_probs = torch.log_softmax(scaled, -1)
        next_ids = scaled.argmax(-1)
        if not self.greedy.all():  # the evaluation's batches are all greedy: no sampling work
            probs = log_probs.exp()
            for row, r in enumerate(self.rows):
                if r.temperature > 0 and (r.top_k > 0 or r.top_p < 1.0):
                    probs[row] = torch.softmax(_filter_logits(scaled[row], r.top_k, r.top_p), -1)
            # One draw from each request's own generator: a request's tokens depend on its seed only.
            uniforms = torch.tensor(
                [float(torch.rand((), generator=r.generator)) if r.temperature > 0 else 0.0 for r in self.rows],
                dtype=torch.float64,
            )
            next_ids = torch.where(self.greedy, next_ids, sample_rows(probs, uniforms))
        chosen = log_probs.gather(1, next_ids[:, None])[:, 0].tolist()
        finished = []
        for row, (r, out, token) in enumerate(zip(self.rows, self.outputs, next_ids.tolist())):
            if row in self.done:
                continue
            out["token_ids"].append(token)
            if r.want_logprobs:
                out["log_probs"].append(chosen[row])
            if token in r.stop_ids or len(out["token_ids"]) >= r.max_tokens:
                out["stop_reason"] = "completed"  # vLLM's name for both "stop" and "length"
                finished.append((r, out))
                self.done.add(row)
        # A finished row stays in the cache, decoded for nothing, until a quarter of the rows
        # have finished: taking rows out copies the whole cache, which at a few hundred long
        # rows cost more than the wasted decoding.
        if len(self.done) >= len(self.rows) * COMPACT_SHARE:
            next_ids = next_ids[self._drop_finished()]
        if self.rows:
            self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long)], dim=1)
            self.positions = self.positions + 1
            self.logits = self.model(
                input_ids=next_ids[:, None],
                attention_mask=self.mask,
                position_ids=self.positions,
                past_key_values=self.cache,
                use_cache=True,
            ).logits[:, -1]
        return finished

    def run(self, max_steps: int, should_stop=lambda: False) -> list[tuple[Request, dict]]:
        """Steps until a row finishes, ``max_steps`` are done or ``should_stop()``: then every
        row leaves, its output marked aborted."""
        for _ in range(max_steps):
            if should_stop():
                return self.abort()
            finished = self.step()
            if finished or not self.live:
                return finished
        return []

    @property
    def live(self) -> list[Request]:
        """The requests still decoding."""
        return [r for row, r in enumerate(self.rows) if row not in self.done]

    def abort(self) -> list[tuple[Request, dict]]:
        finished = [(r, out) for row, (r, out) in enumerate(zip(self.rows, self.outputs)) if row not in self.done]
        for _, out in finished:
            out["stop_reason"] = "aborted"
        self._keep([])
        return finished

    def _drop_finished(self) -> list[int]:
        """Take the finished rows out of the cache; returns the rows kept."""
        keep = [row for row in range(len(self.rows)) if row not in self.done]
        self._keep(keep)
        return keep

    def _keep(self, rows: list[int]) -> None:
        self.rows = [self.rows[row] for row in rows]
        self.outputs = [self.outputs[row] for row in rows]
        self.done = set()
        if not rows:  # the next admit starts afresh
            self.cache = self.mask = self.positions = self.logits = None
            return
        index = torch.tensor(rows)
        self.cache.batch_select_indices(index)
        self.mask, self.positions, self.logits = self.mask[index], self.positions[index], self.logits[index]
        self.temperatures, self.greedy = self.temperatures[index], self.greedy[index]


def decode_batch(model, requests: list[Request], pad_id: int = 0, should_stop=lambda: False) -> list[dict]:
    """Decode ``requests`` as one batch (``RunningBatch``): token ids, log-probs and stop
    reason per request. Finished rows leave the batch (and the cache): sampled lengths
    vary a lot, and decoding every row until the longest one ends cost ~3.5x the tokens kept."""
    batch = RunningBatch(model, pad_id)
    batch.admit(requests)
    outputs = {}
    while batch.live:
        for request, out in batch.run(max(r.max_tokens for r in requests), should_stop):
            outputs[id(request)] = out
    return [outputs[id(r)] for r in requests]
