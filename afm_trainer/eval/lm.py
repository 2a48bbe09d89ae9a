"""Scoring a HF causal LM on chat data: loss on the assistant's tokens, greedy answers.

Both follow the model's own chat template, the same one verl trains with, so what is
scored is exactly what was trained (seed 004's Phase B failed on a train/eval format gap).
"""

from __future__ import annotations

import torch

from afm_trainer.models.decoding import Request, decode_batch, load_decoding_model


def load_model(model_dir: str):
    """A checkpoint's HF export, ready to answer (``load_decoding_model``): in float32, the
    dtype the CPU recipes train in (verl exports bf16, which CPUs without bf16 matrix
    units, such as AVX2-only ones, multiply several times slower than fp32)."""
    return load_decoding_model(model_dir, torch.float32)


def _prompt_and_full_ids(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids of the conversation up to the last assistant turn, and of all of it up to
    that turn's end-of-turn token (the template's newline after it is never trained)."""
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True)
    full = tokenizer.apply_chat_template(messages, tokenize=True)
    as_ids = lambda x: list(x["input_ids"] if hasattr(x, "keys") else x)  # noqa: E731
    prompt, full = as_ids(prompt), as_ids(full)
    ends = [i for i in range(len(prompt), len(full)) if full[i] == tokenizer.eos_token_id]
    return prompt, full[: ends[-1] + 1] if ends else full


@torch.no_grad()
def assistant_loss(model, tokenizer, conversations: list[list[dict]], batch_size: int = 16) -> float:
    """Mean cross-entropy per token of each conversation's last assistant turn
    (its end-of-turn token included), over all conversations."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(conversations), batch_size):
        pairs = [_prompt_and_full_ids(tokenizer, c) for c in conversations[start : start + batch_size]]
        width = max(len(full) for _, full in pairs)
        input_ids = torch.full((len(pairs), width), tokenizer.pad_token_id)
        labels = torch.full((len(pairs), width), -100)
        attention = torch.zeros((len(pairs), width), dtype=torch.long)
        for row, (prompt, full) in enumerate(pairs):
            input_ids[row, : len(full)] = torch.tensor(full)
            attention[row, : len(full)] = 1
            labels[row, len(prompt) : len(full)] = torch.tensor(full[len(prompt) :])
        logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
        shifted = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="sum", ignore_index=-100
        )
        total += shifted.item()
        count += int((labels[:, 1:] != -100).sum())
    return total / max(count, 1)


def greedy_decode(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    stop_ids: list[int],
    temperature: float = 0.0,
    seeds: list[int] | None = None,
) -> list[list[int]]:
    """The tokens `model.generate(do_sample=False)` appends to each row of a left-padded
    batch (a stop token included), by the rollout's decoder: a row leaves the batch, KV
    cache and all, as soon as it stops, where generate() decodes every row until the
    last one stops (trained models: 2-3x the tokens actually kept). With a temperature,
    row i samples from its own stream seeded ``seeds[i]``."""
    requests = [
        Request(
            prompt_ids=ids[mask.bool()].tolist(),
            max_tokens=max_new_tokens,
            temperature=temperature,
            stop_ids=set(stop_ids),
            generator=torch.Generator().manual_seed(seeds[row]) if temperature > 0 else None,
        )
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask))
    ]
    return [out["token_ids"] for out in decode_batch(model, requests)]


def generate(
    model,
    tokenizer,
    prompts: list[list[dict]],
    max_new_tokens: int = 48,
    batch_size: int = 32,
    stop_ids: list[int] | None = None,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """Greedy completions (decoded, special tokens dropped) for chat prompts, stopping at
    the end of the turn or at any of `stop_ids`; sampled ones with a temperature (prompt
    i from the stream seeded ``seed * 1_000_003 + i``, whatever the batching)."""
    completions = generate_counted(model, tokenizer, prompts, max_new_tokens, batch_size, stop_ids, temperature, seed)
    return [text for text, _, _ in completions]


def generate_counted(
    model,
    tokenizer,
    prompts: list[list[dict]],
    max_new_tokens: int = 48,
    batch_size: int = 32,
    stop_ids: list[int] | None = None,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[tuple[str, int, int]]:
    """``generate``'s completions with what each cost: (text, prompt tokens, generated tokens)."""
    model.eval()
    stop_ids = [tokenizer.eos_token_id] + list(stop_ids or [])
    outputs = []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [
                tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
                for p in prompts[start : start + batch_size]
            ]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            seeds = [seed * 1_000_003 + start + i for i in range(len(texts))]
            new_tokens = greedy_decode(
                model, batch["input_ids"], batch["attention_mask"], max_new_tokens, stop_ids, temperature, seeds
            )
            decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            lengths = batch["attention_mask"].sum(-1).tolist()
            outputs += [(text, n, len(ids)) for text, n, ids in zip(decoded, lengths, new_tokens)]
    finally:
        tokenizer.padding_side = old_side
    return outputs
