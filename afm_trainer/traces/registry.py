"""Every trajectory format the converters take: how it is recognised, how it parses, what
is trained. ``FORMATS`` maps the names of ``--format`` to them; ``--format auto`` picks
one per file from its first record (``detect_format``).

A format is a unit: ``parse`` turns one input record into a ``Trajectory`` or raises
``TraceError`` with the reason; ``looks_like`` says whether a record has the format's
shape (the keys that identify it, nothing more: ``parse`` does the checking). Data that
belongs to another tool (preference pairs, RL prompts, QA lists) is recognised too, so
``auto`` says where to take it instead of rejecting every record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from afm_trainer.models.special_tokens import IM_START
from afm_trainer.traces.chat import parse_alpaca, parse_openai_chat, parse_sharegpt
from afm_trainer.traces.formats import TraceError, Trajectory, parse_agent_chain, parse_search_agent, parse_teacher_cot
from afm_trainer.traces.rollout_text import parse_rollout_text

CHAT_OPTIONS = ("reasoning", "untrained_tags")


def _has(record: dict, *keys: str) -> bool:
    return all(key in record for key in keys)


def _list_of_dicts_with(record: dict, key: str, field: str) -> bool:
    value = record.get(key)
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and field in value[0]


@dataclass(frozen=True)
class Format:
    name: str
    parse: Callable[..., Trajectory]
    looks_like: Callable[[dict], bool]
    detected_by: str  # for the docs: the keys that identify it
    trained: str  # for the docs: what is trained
    chat: bool = False  # tool schemas and structured calls, rendered by the chat template
    options: tuple[str, ...] = ()  # the converter's options its parser takes


FORMATS = {
    f.name: f
    for f in [
        Format(
            "search_agent",
            parse_search_agent,
            lambda r: _has(r, "question", "trace"),
            "`question` + `trace`",
            "reasoning, search calls and the answer; never the search results",
        ),
        Format(
            "agent_chain",
            parse_agent_chain,
            lambda r: _has(r, "task", "trajectory"),
            "`task` + `trajectory`",
            "every agent's turn, after its role token",
            options=("agent_roles",),
        ),
        Format(
            "sharegpt",
            parse_sharegpt,
            lambda r: _list_of_dicts_with(r, "conversations", "from"),
            "`conversations` of `{from, value}`",
            "`gpt` and `function_call` turns as the chat template renders them; never `observation`",
            chat=True,
            options=CHAT_OPTIONS,
        ),
        Format(
            "messages",
            parse_openai_chat,
            lambda r: _list_of_dicts_with(r, "messages", "role"),
            "`messages` of `{role, content}`",
            "assistant turns (content, reasoning, tool calls) as the chat template renders them; never tool turns",
            chat=True,
            options=CHAT_OPTIONS,
        ),
        Format(
            "rollout_text",
            parse_rollout_text,
            lambda r: (
                (isinstance(r.get("text"), str) and IM_START in r["text"])
                or (isinstance(r.get("prompt"), str) and isinstance(r.get("response"), str))
            ),
            f"`text` holding `{IM_START}` frames, or `prompt` + `response` strings",
            "assistant turns; never other turns, nor tool output written into a turn (`<information>`...)",
            chat=True,
            options=CHAT_OPTIONS,
        ),
        Format(
            "alpaca",
            parse_alpaca,
            lambda r: _has(r, "instruction", "output"),
            "`instruction` + `output`",
            "`output` (and the responses of `history`)",
            chat=True,
            options=CHAT_OPTIONS,
        ),
        Format(
            "teacher_cot",
            parse_teacher_cot,
            lambda r: _has(r, "question", "answer") and not _has(r, "golden_answers"),
            "`question` + `answer`",
            "the teacher's reasoning and answer",
        ),
    ]
}

# Data for another command: recognised so that `auto` can say where it goes.
OTHER_DATA = [
    (lambda r: _has(r, "chosen", "rejected"), "preference pairs: convert them with data_preprocess/make_pairs.py"),
    (
        lambda r: _has(r, "prompt", "reward_model"),
        "verl RL rows (prompt, reward_model): the GRPO recipe reads such parquet as it is",
    ),
    (
        lambda r: _has(r, "question") and (_has(r, "golden_answers") or isinstance(r.get("answer"), list)),
        "QA rows with answer aliases: make RL data with data_preprocess/make_rl_data.py --qa_file",
    ),
]


class UnknownFormat(ValueError):
    """No format recognised; the message says what was seen."""


def format_of(record: dict) -> str:
    """The name of the format ``record`` has, or UnknownFormat saying why none."""
    for looks_like, message in OTHER_DATA:  # first: a ShareGPT preference record has `conversations` too
        if looks_like(record):
            raise UnknownFormat(f"these are {message}")
    for fmt in FORMATS.values():
        if fmt.looks_like(record):
            return fmt.name
    keys = ", ".join(sorted(map(str, record))[:12]) or "none"
    known = "; ".join(f"{f.name}: {f.detected_by}" for f in FORMATS.values())
    raise UnknownFormat(f"no known format has these keys ({keys}); the formats: {known}")


def detect_format(records: Iterable[tuple[str, object]]) -> tuple[str, str]:
    """(format name, location of the record it was told from): the first JSON object decides."""
    for location, record in records:
        if isinstance(record, dict):
            try:
                return format_of(record), location
            except UnknownFormat as exc:
                raise UnknownFormat(f"{location}: {exc}") from None
    raise UnknownFormat("no JSON object to detect the format from")


__all__ = ["FORMATS", "Format", "TraceError", "UnknownFormat", "detect_format", "format_of"]
