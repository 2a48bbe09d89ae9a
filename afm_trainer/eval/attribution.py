"""How much of a response's integrated-gradients attribution falls on one span of the prompt.

``span_attribution_share`` explains f = log p(response | prompt) of a causal LM with
captum's ``LayerIntegratedGradients`` over the input embeddings, from a baseline where
the last user message's content is replaced by pad tokens. It returns the share of
|attribution| that lands on the tokens of a character span of that content: for a prompt
of question + "\\n\\nStudent draft:\\n" + draft, how much the answer leans on the draft
rather than on the question. The prompt is rendered with the model's own chat template,
as in training and evaluation, so the tokens explained are the tokens the model sees.
"""

from __future__ import annotations

import torch
from captum.attr import LayerIntegratedGradients

# Stands in for the user content when locating it in the templated text: unlike the
# content itself, it cannot also occur in the template's own text (role names, markers).
_SENTINEL = "\x00span-attribution-content\x00"


def _content_start(tokenizer, messages: list[dict], templated: str) -> int:
    """Character offset of the last message's content in `templated`."""
    content = messages[-1]["content"]
    marked = messages[:-1] + [{**messages[-1], "content": _SENTINEL}]
    marked_text = tokenizer.apply_chat_template(marked, add_generation_prompt=True, tokenize=False)
    start = marked_text.find(_SENTINEL)
    if start < 0 or marked_text.replace(_SENTINEL, content) != templated:
        raise ValueError("the last user message's content does not appear verbatim in the chat-templated prompt")
    return start


def _response_log_prob(model, input_ids: torch.Tensor, first_response: int, **model_kwargs) -> torch.Tensor:
    """Sum of log p(token | tokens before it) over positions >= first_response, per row."""
    logits = model(input_ids=input_ids, use_cache=False, **model_kwargs).logits.float()
    # Logits at position t predict token t + 1.
    log_probs = torch.log_softmax(logits[:, first_response - 1 : -1], dim=-1)
    targets = input_ids[:, first_response:].unsqueeze(-1)
    return log_probs.gather(-1, targets).squeeze(-1).sum(dim=-1)


def span_attribution_share(
    model,
    tokenizer,
    messages: list[dict],
    response: str,
    span: tuple[int, int],
    n_steps: int = 32,
    internal_batch_size: int | None = None,
) -> tuple[float, float]:
    """(share of |attribution| on the prompt tokens inside `span`, captum's convergence
    delta relative to |f(x) - f(baseline)|).

    `messages` is a chat prompt whose last message is the user turn; `span` is a
    (start, end) character range in that message's content; `response` is the assistant
    text explained, appended to ``apply_chat_template(messages, add_generation_prompt=True)``.
    f is the summed log-probability of the response tokens. Attribution is over the
    tokens of the user content only: the baseline replaces exactly those with the pad
    token, keeping the template's tokens and the response.

    A token belongs to the span when its first character inside the content lies in
    [start, end), so the spans of a partition of the content get shares summing to 1.
    The share is NaN when f does not depend on the content at all (zero attribution).
    A relative delta of a few percent or less means `n_steps` was enough.
    """
    content = messages[-1]["content"]
    start, end = span
    if not 0 <= start <= end <= len(content):
        raise ValueError(f"span {span} is outside the user content (length {len(content)})")

    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    content_start = _content_start(tokenizer, messages, prompt)
    content_end = content_start + len(content)
    encoded = tokenizer(prompt + response, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    input_ids = torch.tensor([encoded["input_ids"]])

    # A token that a merge stretched across a boundary counts as part of the response / content.
    first_response = next((i for i, (_, stop) in enumerate(offsets) if stop > len(prompt)), None)
    in_content = torch.tensor([a < content_end and b > content_start for a, b in offsets])
    token_start = torch.tensor([max(a, content_start) - content_start for a, _ in offsets])
    in_span = in_content & (token_start >= start) & (token_start < end)
    if first_response is None or not in_content.any():
        raise ValueError("need a non-empty response and non-empty user content to attribute")

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    baseline_ids = input_ids.masked_fill(in_content.unsqueeze(0), pad_id)

    was_training = model.training
    model.eval()
    try:
        # Every position is attended: the pad ids of the baseline are content, not padding.
        forward = lambda ids: _response_log_prob(model, ids, first_response, attention_mask=torch.ones_like(ids))
        ig = LayerIntegratedGradients(forward, model.get_input_embeddings())
        attributions, delta = ig.attribute(
            input_ids,
            baselines=baseline_ids,
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
        with torch.no_grad():
            gap = (forward(input_ids) - forward(baseline_ids)).abs().item()
    finally:
        model.train(was_training)

    per_token = attributions[0].sum(dim=-1).abs().detach()
    total = per_token[in_content].sum().item()
    share = per_token[in_span].sum().item() / total if total > 0 else float("nan")
    relative_delta = abs(delta.item()) / gap if gap > 0 else float("nan")
    return share, relative_delta
