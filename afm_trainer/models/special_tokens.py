"""The project's special tokens, and a helper that gives them to any HF model.

Every tag a trajectory format uses must be ONE token: a mask or a stop rule built
from ``tokenizer.encode("<think>")[0]`` is otherwise just the token for "<".
"""

from __future__ import annotations

# Chat-template control tokens (ChatML, as Qwen2 uses them).
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
CONTROL_TOKENS = [END_OF_TEXT, IM_START, IM_END]

# One token per agent role of a multi-agent chain (seed 001).
ROLE_TOKENS = ["<|planner|>", "<|coder|>", "<|reviewer|>"]

# Tags of search-agent and chain-of-thought traces (seed 002).
TRACE_TAGS = [
    "<think>",
    "</think>",
    "<search>",
    "</search>",
    "<information>",
    "</information>",
    "<answer>",
    "</answer>",
    "<summary>",
    "</summary>",
]

# Role and trace tokens stay visible in decoded text (evaluation parses them), so they
# are added as normal tokens, never split, rather than as "special" tokens that
# ``decode(skip_special_tokens=True)`` would drop.
PROJECT_TOKENS = ROLE_TOKENS + TRACE_TAGS


def add_project_tokens(tokenizer, model=None) -> int:
    """Register the project's tokens on an existing HF tokenizer (and resize the model).

    Returns how many tokens were new. New embedding rows are initialised by
    transformers' ``resize_token_embeddings`` (mean of the old rows), so a pretrained
    model is not disturbed by random rows.
    """
    from tokenizers import AddedToken

    new = tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in PROJECT_TOKENS])
    if model is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return new


def check_single_tokens(tokenizer, tokens=PROJECT_TOKENS) -> None:
    """Raise ValueError naming every token the tokenizer splits into several pieces."""
    split = {t: ids for t in tokens if len(ids := tokenizer.encode(t, add_special_tokens=False)) != 1}
    if split:
        raise ValueError(f"tokens not registered as single tokens: {split}")
