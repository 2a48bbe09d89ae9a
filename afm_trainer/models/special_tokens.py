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
    """Register the project's tokens on an existing HF tokenizer (and give them rows in the model).

    Returns how many tokens were new. Each new token's input embedding (and its output
    row, where the LM head is not tied) is the mean of the rows of the tokens the
    tokenizer had: a pretrained model is not disturbed by random rows. The matrices grow
    where they are too small; where they already have room (Qwen2.5 pads its 151,665
    tokens to 151,936 rows), the new tokens take the next rows, which are set the same way
    instead of keeping whatever the padding held.
    """
    from tokenizers import AddedToken

    old = len(tokenizer)
    new = tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in PROJECT_TOKENS])
    if model is None or not new:
        return new
    import torch

    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(output.weight)
    with torch.no_grad():
        for weight in matrices:
            weight[old : len(tokenizer)] = weight[:old].float().mean(0).to(weight.dtype)
    return new


def main(argv=None) -> int:
    """python -m afm_trainer.models.special_tokens --model IN --out OUT: IN with the
    project's role and trace tokens added (the rule above), written to OUT."""
    import argparse
    import os
    import shutil

    parser = argparse.ArgumentParser(description="Add the project's role and trace tokens to an HF model.")
    parser.add_argument("--model", required=True, help="HF model folder")
    parser.add_argument("--out", required=True, help="folder to write the model with the tokens to")
    args = parser.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto")
    new = add_project_tokens(tokenizer, model)
    check_single_tokens(tokenizer)
    tmp = args.out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp, args.out)
    rows = model.get_input_embeddings().weight.shape[0]
    print(f"wrote {args.out}: {new} tokens added, {len(tokenizer)} tokens, {rows} embedding rows")
    return 0


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


TOOL_OUTPUT_HAZARD = re.compile(f"{RESERVED_TOKEN.pattern}|{TRACE_TAG.pattern}|</?code>")


def neutralised(text: str) -> str:
    """Tool output (a program's stdout, a server's text) as a tool turn may show it: each
    reserved-token-shaped string and trace or tool tag has its ``<`` written ``‹``, so it
    can neither become a control token nor open, close or forge a block the reward or the
    tool parser reads."""
    return TOOL_OUTPUT_HAZARD.sub(lambda m: "\u2039" + m.group(0)[1:], text)


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


if __name__ == "__main__":
    raise SystemExit(main())
