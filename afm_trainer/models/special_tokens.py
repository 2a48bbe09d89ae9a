"""The project's special tokens, and a helper that gives them to any HF model.

Every tag a trajectory format uses must be ONE token: a mask or a stop rule built
from ``tokenizer.encode("<think>")[0]`` is otherwise just the token for "<".
"""

from __future__ import annotations

import re

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


# Text from data is never trained as a control token. A tokenizer matches its added
# tokens anywhere in the text it is given, and verl tokenizes the rendered chat template
# as one string, so ``split_special_tokens`` cannot protect only the content: text
# holding a reserved token is refused, never rewritten. Reserved: anything shaped like
# ``<|name|>`` (this project's control and role tokens, and those of Qwen, Llama 3, Phi).
RESERVED_TOKEN = re.compile(r"<\|[^<>|\s]{1,64}\|>")
TRACE_TAG = re.compile("|".join(re.escape(t) for t in TRACE_TAGS))


def special_tokens_of(tokenizer) -> list[str]:
    """A HF tokenizer's special tokens: its chat control tokens, whatever their shape
    (``<|im_end|>``, ``</s>``, ``<end_of_turn>``)."""
    added = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return sorted(added | set(tokenizer.all_special_tokens))


def first_of(tokens: list[str], text: str) -> str | None:
    """The first of ``tokens`` found in ``text``, if any."""
    return next((t for t in tokens if t in text), None)


def reserved_token_in(text: str) -> str | None:
    """The first reserved-token-shaped string in ``text``, if any."""
    match = RESERVED_TOKEN.search(text)
    return match.group(0) if match else None


def trace_tag_in(text: str) -> str | None:
    """The first trace tag (``<think>``, ``</search>``...) in ``text``, if any."""
    match = TRACE_TAG.search(text)
    return match.group(0) if match else None


def tag_structure_problem(text: str) -> str | None:
    """Why the trace tags in ``text`` are not well formed (every tag closed, in order,
    none opened inside itself), or None."""
    open_tags: list[str] = []
    for match in TRACE_TAG.finditer(text):
        tag = match.group(0)
        name = tag.strip("</>")
        if not tag.startswith("</"):
            if name in open_tags:
                return f"{tag} opened inside <{name}>"
            open_tags.append(name)
        elif not open_tags or open_tags[-1] != name:
            return f"{tag} without its opening tag" if name not in open_tags else f"{tag} closes <{name}> too early"
        else:
            open_tags.pop()
    return f"<{open_tags[-1]}> is never closed" if open_tags else None
