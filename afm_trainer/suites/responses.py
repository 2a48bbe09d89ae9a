"""What a model's response says, by the tag grammar the project trains (no torch here:
verl's reward workers import it).

A well-formed response is tool calls (``<search>...</search>`` or ``<code>...</code>``,
each non-empty), then one non-empty ``<answer>...</answer>``, with reasoning
(``<think>...</think>``, ``<summary>...</summary>``) anywhere before the answer; every
block is closed before the next opens (``<think><answer></think></answer>`` and any
other interleaving or nesting is malformed). For code, a response with no answer or tool
tags (reasoning blocks allowed, well formed) and exactly one ```python block is
well-formed too.

Only the policy's own text is read: a response of verl's tool agent loop also holds the
tool turns, whose output (``<information>...</information>``) is removed first (tool
output cannot close that block early: the tools neutralise trace tags in what they
return, ``afm_trainer.models.special_tokens.neutralised``). Every function here is
linear in the text's length.
"""

from __future__ import annotations

import re

from afm_trainer.traces.formats import tool_calls

TAG = re.compile(r"</?(?:answer|search|code|think|summary)>")
ANSWER_OR_TOOL_TAG = re.compile(r"</?(?:answer|search|code)>")
TAG_LETTER = {
    "<search>": "s",
    "</search>": "S",
    "<code>": "c",
    "</code>": "C",
    "<answer>": "a",
    "</answer>": "A",
    "<think>": "t",
    "</think>": "T",
    "<summary>": "m",
    "</summary>": "M",
}
# Tool calls and reasoning, each block closed before the next opens, then exactly one answer.
WELL_FORMED = re.compile(r"(?:sS|cC|tT|mM)*aA")
REASONING_ONLY = re.compile(r"(?:tT|mM)*")
FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
PYTHON_FENCE = re.compile(r"```[ \t]*(?:python|py)[ \t]*\n(.*?)```", re.DOTALL)


def policy_text(text: str) -> str:
    """``text`` without its tool output: each ``<information>...</information>`` block,
    and an unclosed one (a response cut off inside a tool turn) to the end."""
    kept, position = [], 0
    while (start := text.find("<information>", position)) >= 0:
        kept.append(text[position:start])
        end = text.find("</information>", start)
        if end < 0:
            return "".join(kept)
        position = end + len("</information>")
    return "".join(kept) + text[position:]


def first_answer(text: str) -> str | None:
    """The content of the first <answer>...</answer> of the policy's text, stripped; None
    if there is none (what the held-out evaluation reads)."""
    text = policy_text(text)
    start = text.find("<answer>")
    end = text.find("</answer>", start) if start >= 0 else -1
    return text[start + len("<answer>") : end].strip() if end >= 0 else None


def tag_letters(text: str) -> str:
    """The response's tags in order, one letter each (``TAG_LETTER``)."""
    return "".join(TAG_LETTER[t] for t in TAG.findall(text))


def answer_of(text: str) -> str | None:
    """The answer of a well-formed response, else None (what the reward reads)."""
    text = policy_text(text)
    if not WELL_FORMED.fullmatch(tag_letters(text)):
        return None
    if any(not body.strip() for _, body in tool_calls(text)):
        return None
    return first_answer(text) or None


def code_of(text: str) -> str | None:
    """The code of a well-formed code response: the answer (unfenced if it holds a
    fenced block) or, in a response without answer or tool tags, its one ```python block."""
    if not ANSWER_OR_TOOL_TAG.search(text):
        if not REASONING_ONLY.fullmatch(tag_letters(text)):
            return None
        blocks = PYTHON_FENCE.findall(text)
        return blocks[0] if len(blocks) == 1 and blocks[0].strip() else None
    answer = answer_of(text)
    if answer is None:
        return None
    fenced = FENCE.search(answer)
    return fenced.group(1) if fenced else answer
