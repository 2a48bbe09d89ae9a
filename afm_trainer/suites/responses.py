"""What a model's response says, by the tag grammar the project trains (no torch here:
verl's reward workers import it).

A well-formed response is tool calls (``<search>...</search>`` or ``<code>...</code>``,
each non-empty), then one non-empty ``<answer>...</answer>``; for code, a response with
no tags and exactly one ```python block is well-formed too.
"""

from __future__ import annotations

import re

from afm_trainer.traces.formats import TOOL_CALL

TAG = re.compile(r"</?(?:answer|search|code)>")
TAG_LETTER = {"<search>": "s", "</search>": "S", "<code>": "c", "</code>": "C", "<answer>": "a", "</answer>": "A"}
WELL_FORMED = re.compile(r"(?:sS|cC)*aA")  # tool calls first, then exactly one answer
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
PYTHON_FENCE = re.compile(r"```[ \t]*(?:python|py)[ \t]*\n(.*?)```", re.DOTALL)


def first_answer(text: str) -> str | None:
    """The content of the first <answer>...</answer>, stripped; None if there is none
    (what the held-out evaluation reads)."""
    m = ANSWER.search(text)
    return m.group(1).strip() if m else None


def answer_of(text: str) -> str | None:
    """The answer of a well-formed response, else None (what the reward reads)."""
    tags = "".join(TAG_LETTER[t] for t in TAG.findall(text))
    if not WELL_FORMED.fullmatch(tags):
        return None
    if any(not body.strip() for _, body in TOOL_CALL.findall(text)):
        return None
    return ANSWER.search(text).group(1).strip() or None


def code_of(text: str) -> str | None:
    """The code of a well-formed code response: the answer (unfenced if it holds a
    fenced block) or, in a response without tags, its one ```python block."""
    if not TAG.search(text):
        blocks = PYTHON_FENCE.findall(text)
        return blocks[0] if len(blocks) == 1 and blocks[0].strip() else None
    answer = answer_of(text)
    if answer is None:
        return None
    fenced = FENCE.search(answer)
    return fenced.group(1) if fenced else answer
