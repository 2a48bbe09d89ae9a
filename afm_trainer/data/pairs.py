"""Preference pairs: the parquet format preference training reads, and a converter for the
pair files users already have (TRL's preference formats, LLaMA-Factory's ShareGPT and
Alpaca preference formats, agents' good and bad trajectories after one prompt).

Format (``PAIR_SCHEMA``): TRL's conversational preference format plus three columns.
- ``prompt``: the conversation before the response, chat messages ``{role, content}``;
- ``chosen``, ``rejected``: the preferred and the dispreferred response to it: the
  assistant's messages and, in an agent's response, the tool results between them (role
  ``tool``: context inside the response, never scored; preference training scores the
  assistant's tokens only);
- ``pair_id``: a name unique within the file, for reports and rejects;
- ``source``: where the pair comes from (``"user"`` for a pair file, ``"teacher_cot"`` for
  the pairs ``convert_traces.py --format teacher_cot`` writes to ``OUT.pairs.parquet``);
- ``weight``: how much the pair counts in the loss (1.0 unless said otherwise).
A file with structured tool calls or function schemas is written in ``TOOL_PAIR_SCHEMA``:
the same columns, every message with ``tool_calls`` and the pair with ``tools``, both JSON
(OpenAI's shapes, ``arguments`` an object), typed as Arrow's JSON type so that ``datasets``
loads them as objects, the shape TRL's DPOTrainer hands the chat template. A file holds
these fields only when one of its pairs needs them: a template that tests ``'tool_calls'
in message`` (Llama 3.1's) fails on a null field.

Input (``convert_pairs``): JSONL, a JSON array or parquet, one pair per record, in one of
the ``PAIR_FORMATS`` (``auto``: told from the file's first JSON object):
- ``pairs`` (TRL's preference formats):
  - explicit prompt: ``prompt`` a non-empty string (one user message) or a non-empty list
    of messages with roles system/user/assistant/tool, the last one not the assistant's;
    ``chosen``, ``rejected`` each a non-empty string (one assistant message) or a list of
    assistant and tool messages starting and ending with the assistant's;
  - implicit prompt (no ``prompt``): ``chosen`` and ``rejected`` each the whole
    conversation. Message lists: the prompt is the messages both start with, as TRL's
    ``extract_prompt`` takes it, except that a prompt here never ends with the assistant's
    turn (TRL continues such a turn; here the shared assistant turns open both responses,
    where their equal log-probs cancel in the DPO margin). Strings: the prompt is their
    longest common prefix, less the space before the first difference (TRL's rule); a
    prefix that ends inside a word (``"The sky is b"`` of ``"The sky is blue"`` and
    ``"... bright"``) is refused, as are strings of which one starts the other;
  - a message: ``{role, content}``; an assistant message may carry ``tool_calls``
    (OpenAI's: ``[{"type": "function", "function": {"name", "arguments"}}]``, arguments an
    object or a JSON string holding one) and then may have no content; ``tools``: the
    function schemas (a list or a JSON string holding one), as TRL reads them.
- ``sharegpt`` (LLaMA-Factory): ``conversations`` of ``{from, value}`` turns (human, gpt,
  function_call, observation, system) ending with a human or observation turn; ``chosen``
  and ``rejected`` a ``{from: gpt, value}`` turn or a list of gpt/function_call/observation
  turns; optional ``system`` and ``tools``.
- ``alpaca`` (LLaMA-Factory): ``instruction``, optional ``input`` (the user message is
  ``instruction + "\\n" + input`` when there is an input), ``chosen`` and ``rejected``
  strings; optional ``system`` and ``history`` (``[[instruction, response], ...]``).
- KTO data (TRL's ``prompt``/``completion``/``label``, LLaMA-Factory's ``messages`` or
  Alpaca fields with ``label``/``kto_tag``) has one response per record, labelled good or
  bad, and no rejected response to pair it with: every such record is refused with that
  reason, whatever the format (``auto`` calls such a file ``kto``).
Every format takes the optional ``weight`` (a finite number > 0, default 1.0),
``pair_id`` (a string or an integer, default the record's location, ``line 3``; a pair_id
seen before is rejected) and ``source`` (a string, default ``"user"``).
Text follows the rules of the trace formats (``afm_trainer.traces.formats``): no text
holds a reserved chat token (``<|im_end|>``...), and the trace tags (``<think>``...) of
every assistant message are well formed; tool output written inside an assistant message
(``<information>``, ``<observation>``, ``<tool_response>``) is closed, and is not scored. Every record is converted or written to
``OUT.rejects.jsonl`` with its location and reason; ``OUT.report.json`` counts them.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from afm_trainer.data.convert import json_or_none, no_records_message, read_records
from afm_trainer.data.parquet_io import InputError, OutputSet, check_output_file, reject_line, unreadable_reason
from afm_trainer.traces.chat import (
    alpaca_prompt,
    alpaca_text,
    json_value,
    parse_call,
    parse_tools,
    sharegpt_message,
    sharegpt_messages,
    untrained_spans,
)
from afm_trainer.traces.formats import TraceError, plain_text, type_name, well_formed_turn

CHAT = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
PAIR_SCHEMA = pa.schema(
    [
        ("prompt", CHAT),
        ("chosen", CHAT),
        ("rejected", CHAT),
        ("pair_id", pa.string()),
        ("source", pa.string()),
        ("weight", pa.float64()),
    ]
)


def _with_tool_fields(json_type: pa.DataType) -> pa.Schema:
    chat = pa.list_(pa.struct([*CHAT.value_type, ("tool_calls", json_type)]))
    return pa.schema(
        [(name, chat) for name in ("prompt", "chosen", "rejected")] + list(PAIR_SCHEMA)[3:] + [("tools", json_type)]
    )


TOOL_PAIR_SCHEMA = _with_tool_fields(pa.json_())
# pyarrow builds no JSON-typed struct field from Python objects: rows are built as text, then cast.
_TOOL_PAIR_ROWS = _with_tool_fields(pa.string())

PROMPT_ROLES = ("system", "user", "assistant", "tool")
RESPONSE_ROLES = ("assistant", "tool")
KTO_LABELS = ("label", "kto_tag")


def _message(message, name: str, roles: tuple[str, ...], text_name: str | None = None) -> dict:
    """An OpenAI-shaped message as ``{role, content[, tool_calls]}``, or the TraceError naming
    it; ``text_name`` names its text in reasons (``conversations[2].value``)."""
    text_name = text_name or f"{name}.content"
    if not isinstance(message, dict):
        raise TraceError(f"{name} must be a {{role, content}} object, got {type_name(message)}")
    role, content = message.get("role"), message.get("content")
    if role not in roles:
        raise TraceError(f"{name} has role {role!r} (allowed: {', '.join(roles)})")
    if content is not None and not isinstance(content, str):
        raise TraceError(f"{text_name} must be a string, got {type_name(content)}")
    calls = _tool_calls(message.get("tool_calls"), name)
    if calls and role != "assistant":
        raise TraceError(f"{name} has tool_calls, but only the assistant calls tools")
    if not calls and (not content or not content.strip()):
        raise TraceError(f"missing or empty {text_name}")
    checked = _checked(role, content or "", text_name)
    if calls:
        checked["tool_calls"] = calls
    return checked


def _tool_calls(value, name: str) -> list[dict]:
    value = json_value(value, f"{name}.tool_calls")  # the pair parquet stores them as JSON text
    if value is None:
        return []
    if not isinstance(value, list):
        raise TraceError(f"{name}.tool_calls must be a list of calls, got {type_name(value)}")
    return [parse_call(call, f"{name}.tool_calls[{k}]") for k, call in enumerate(value)]


def _checked(role: str, content: str, name: str) -> dict:
    """A message obeying the trace formats' text rules: no reserved chat token anywhere,
    and an assistant turn's trace tags well formed (it is what the model learns to write),
    tool output inside it closed (``<observation>...</observation>``: left unscored)."""
    if role == "assistant":
        well_formed_turn(content, name)
        untrained_spans(content, name)
    else:
        plain_text(content, name)
    return {"role": role, "content": content}


def _messages(record: dict, key: str, roles: tuple[str, ...], string_role: str) -> list[dict]:
    """``record[key]`` as chat messages; a plain string is one ``string_role`` message."""
    value = record.get(key)
    if value is not None and not isinstance(value, str | list):
        raise TraceError(f"{key!r} must be a string or a list of messages, got {type_name(value)}")
    if not value or (isinstance(value, str) and not value.strip()):
        raise TraceError(f"missing or empty {key!r}")
    if isinstance(value, str):
        return [_checked(string_role, value, f"{key!r}")]
    return [_message(message, f"{key}[{i}]", roles) for i, message in enumerate(value)]


def _response_order(messages: list[dict], key: str, first_index: int = 0) -> list[dict]:
    """A response opens and closes with the assistant's turn; tool results come between."""
    for i, message in enumerate(messages):
        if message["role"] not in RESPONSE_ROLES:
            name = f"{key}[{first_index + i}]"
            raise TraceError(f"{name} has role {message['role']!r} (allowed: {', '.join(RESPONSE_ROLES)})")
    if messages[0]["role"] != "assistant":
        raise TraceError(f"{key}[{first_index}] is a tool result: a response starts with the assistant's turn")
    if messages[-1]["role"] != "assistant":
        raise TraceError(f"the last message of {key!r} is a tool result: a response ends with the assistant's turn")
    return messages


def _prompt_end(prompt: list[dict], what: str) -> list[dict]:
    if prompt[-1]["role"] == "assistant":
        raise TraceError(f"the last message of {what} is the assistant's: the response goes in 'chosen'/'rejected'")
    return prompt


def _refuse_unpaired(record: dict) -> None:
    """KTO data: one response labelled good or bad is not a pair, and is never made one."""
    if "rejected" not in record:
        for key in KTO_LABELS:
            if key in record:
                raise TraceError(
                    f"{key!r}: unpaired KTO data (one response with a good/bad label) has no rejected response "
                    "to pair with; afm-trainer trains pairs"
                )


def _weight(record: dict) -> float:
    weight = record.get("weight")
    if weight is None:
        return 1.0
    if isinstance(weight, bool) or not isinstance(weight, int | float):  # bool is an int to Python
        raise TraceError(f"'weight' must be a number, got {weight!r}")
    # NaN fails every comparison; an int too large for a float is past float_info.max.
    if not 0 < weight <= sys.float_info.max:
        raise TraceError(f"'weight' must be a finite number > 0, got {weight!r}")
    return float(weight)


def _pair_id(record: dict, location: str) -> str:
    pair_id = record.get("pair_id")
    if pair_id is None:
        return location
    if isinstance(pair_id, bool) or not isinstance(pair_id, str | int):
        raise TraceError(f"'pair_id' must be a string or an integer, got {type_name(pair_id)}")
    if not str(pair_id).strip():
        raise TraceError("'pair_id' is empty")
    return str(pair_id)


def _source(record: dict) -> str:
    source = record.get("source")
    if source is None:
        return "user"
    if not isinstance(source, str):
        raise TraceError(f"'source' must be a string, got {type_name(source)}")
    if not source.strip():
        raise TraceError("'source' is empty")
    return source


def _tools(record: dict) -> list[dict] | None:
    tools = record.get("tools")
    if isinstance(tools, str) and not tools.strip():  # LLaMA-Factory files write "" for none
        return None
    return parse_tools(tools)


def _pair(record: dict, location: str, prompt: list, chosen: list, rejected: list) -> dict:
    """The row of ``PAIR_SCHEMA`` (``TOOL_PAIR_SCHEMA`` with tools) of parsed messages."""
    if chosen == rejected:
        raise TraceError("chosen and rejected are the same")
    pair = {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "pair_id": _pair_id(record, location),
        "source": _source(record),
        "weight": _weight(record),
    }
    if tools := _tools(record):
        pair["tools"] = tools
    return pair


# --- TRL's preference formats ---------------------------------------------------------


def parse_pair(record: dict, location: str) -> dict:
    """One ``pairs`` record as a row of ``PAIR_SCHEMA``, or a TraceError naming the field.
    ``location`` (``line 3``) is the pair_id when the record has none."""
    _refuse_unpaired(record)
    if record.get("prompt") is None:
        prompt, chosen, rejected = _implicit_prompt(record)
    else:
        prompt = _prompt_end(_messages(record, "prompt", PROMPT_ROLES, string_role="user"), "'prompt'")
        chosen = _response_order(_messages(record, "chosen", RESPONSE_ROLES, string_role="assistant"), "chosen")
        rejected = _response_order(_messages(record, "rejected", RESPONSE_ROLES, string_role="assistant"), "rejected")
    return _pair(record, location, prompt, chosen, rejected)


def _implicit_prompt(record: dict) -> tuple[list, list, list]:
    """(prompt, chosen, rejected) of a record whose chosen and rejected are whole conversations."""
    chosen, rejected = record.get("chosen"), record.get("rejected")
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if value is not None and not isinstance(value, str | list):
            raise TraceError(f"{key!r} must be a string or a list of messages, got {type_name(value)}")
        if not value or (isinstance(value, str) and not value.strip()):
            raise TraceError(f"missing or empty {key!r}")
    if isinstance(chosen, str) and isinstance(rejected, str):
        return _shared_text_prompt(chosen, rejected)
    if isinstance(chosen, list) and isinstance(rejected, list):
        return _shared_messages_prompt(chosen, rejected)
    raise TraceError(
        "without 'prompt', 'chosen' and 'rejected' must both be strings or both be message lists "
        f"(got {type_name(chosen)} and {type_name(rejected)})"
    )


def _is_word_character(character: str) -> bool:
    return character.isalnum() or character == "_"


def _shared_text_prompt(chosen: str, rejected: str) -> tuple[list, list, list]:
    """TRL's ``extract_prompt`` on strings: the longest common prefix, the space before the
    first difference left to the responses."""
    if chosen == rejected:
        raise TraceError("chosen and rejected are the same")
    end = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), None)
    if end is None:
        shorter = "chosen" if len(chosen) < len(rejected) else "rejected"
        other = "rejected" if shorter == "chosen" else "chosen"
        raise TraceError(f"{shorter!r} is the start of {other!r}: no response is left after an implicit prompt")
    if end > 0 and chosen[end - 1] == " ":
        end -= 1
    prompt = chosen[:end]
    if not prompt.strip():
        raise TraceError("'chosen' and 'rejected' start differently: no implicit prompt (give 'prompt')")
    if _is_word_character(prompt[-1]) and (_is_word_character(chosen[end]) or _is_word_character(rejected[end])):
        tail = prompt[-20:]
        raise TraceError(
            f"the text 'chosen' and 'rejected' start with ends inside a word (...{tail!r} + {chosen[end:][:12]!r} "
            f"/ {rejected[end:][:12]!r}): give 'prompt'"
        )
    return (
        [_checked("user", prompt, "the implicit prompt")],
        [_checked("assistant", chosen[end:], "'chosen'")],
        [_checked("assistant", rejected[end:], "'rejected'")],
    )


def _shared_messages_prompt(chosen: list, rejected: list) -> tuple[list, list, list]:
    """TRL's ``extract_prompt`` on conversations: the messages both start with, less any
    assistant turns at its end (they open both responses)."""
    chosen = [_message(m, f"chosen[{i}]", PROMPT_ROLES) for i, m in enumerate(chosen)]
    rejected = [_message(m, f"rejected[{i}]", PROMPT_ROLES) for i, m in enumerate(rejected)]
    if chosen == rejected:
        raise TraceError("chosen and rejected are the same")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == min(len(chosen), len(rejected)):
        shorter, other = ("chosen", "rejected") if len(chosen) < len(rejected) else ("rejected", "chosen")
        raise TraceError(f"{shorter!r} is the start of {other!r}: no response is left after an implicit prompt")
    while shared and chosen[shared - 1]["role"] == "assistant":
        shared -= 1
    if shared == 0:
        raise TraceError(
            "chosen[0] and rejected[0] differ: an implicit prompt is the messages both start with (give 'prompt')"
        )
    return (
        chosen[:shared],
        _response_order(chosen[shared:], "chosen", shared),
        _response_order(rejected[shared:], "rejected", shared),
    )


# --- LLaMA-Factory's preference formats -----------------------------------------------

RESPONSE_SENDERS = ("gpt", "function_call", "observation")


def parse_sharegpt_pair(record: dict, location: str) -> dict:
    """One LLaMA-Factory ShareGPT preference record as a row of ``PAIR_SCHEMA``."""
    _refuse_unpaired(record)
    prompt = []
    for name, message in sharegpt_messages(record, "conversations"):
        text_name = name if name == "'system'" else f"{name}.value"
        prompt.append(_message(message, name, PROMPT_ROLES, text_name))
    prompt = _prompt_end(prompt, "'conversations'")
    chosen, rejected = (_sharegpt_response(record, key) for key in ("chosen", "rejected"))
    return _pair(record, location, prompt, chosen, rejected)


def _sharegpt_response(record: dict, key: str) -> list[dict]:
    value = record.get(key)
    if isinstance(value, dict):
        named = [(key, value)]
    elif isinstance(value, list) and value:
        named = [(f"{key}[{i}]", turn) for i, turn in enumerate(value)]
    elif value is None or value == []:
        raise TraceError(f"missing or empty {key!r}")
    else:
        raise TraceError(f"{key!r} must be a {{from, value}} turn or a list of them, got {type_name(value)}")
    messages = []
    for name, turn in named:
        if not isinstance(turn, dict):
            raise TraceError(f"{name} must be a {{from, value}} turn, got {type_name(turn)}")
        message = sharegpt_message(turn, name)
        if message["role"] not in RESPONSE_ROLES:
            raise TraceError(f"{name}.from is {turn.get('from')!r} (a response has {', '.join(RESPONSE_SENDERS)})")
        messages.append(_message(message, name, RESPONSE_ROLES, f"{name}.value"))
    if messages[0]["role"] != "assistant" or messages[-1]["role"] != "assistant":
        raise TraceError(f"{key!r} must start and end with a gpt or function_call turn")
    return messages


def parse_alpaca_pair(record: dict, location: str) -> dict:
    """One LLaMA-Factory Alpaca preference record as a row of ``PAIR_SCHEMA``."""
    _refuse_unpaired(record)
    prompt = [_checked(m["role"], m["content"], name) for name, m in alpaca_prompt(record)]
    chosen = [_checked("assistant", alpaca_text(record, "chosen"), "'chosen'")]
    rejected = [_checked("assistant", alpaca_text(record, "rejected"), "'rejected'")]
    return _pair(record, location, prompt, chosen, rejected)


# --- formats and their detection ------------------------------------------------------


@dataclass(frozen=True)
class PairFormat:
    name: str
    parse: Callable[[dict, str], dict]
    looks_like: Callable[[dict], bool]
    described: str  # what ``auto`` prints on choosing it


def _has_any(record: dict, *keys: str) -> bool:
    return any(key in record for key in keys)


PAIR_FORMATS = {
    f.name: f
    for f in [
        PairFormat(  # every parser refuses labelled records; one without a label is read as a pair
            "kto",
            parse_pair,
            lambda r: "rejected" not in r and _has_any(r, *KTO_LABELS),
            "unpaired KTO data (one labelled response per record): every labelled record is refused",
        ),
        PairFormat(
            "sharegpt",
            parse_sharegpt_pair,
            lambda r: "conversations" in r and _has_any(r, "chosen", "rejected"),
            "LLaMA-Factory ShareGPT preference data (conversations + chosen + rejected)",
        ),
        PairFormat(
            "alpaca",
            parse_alpaca_pair,
            lambda r: "instruction" in r and _has_any(r, "chosen", "rejected"),
            "LLaMA-Factory Alpaca preference data (instruction + chosen + rejected)",
        ),
        PairFormat(
            "pairs",
            parse_pair,
            lambda r: _has_any(r, "chosen", "rejected", "prompt"),
            "TRL preference data (prompt + chosen + rejected, or chosen + rejected with an implicit prompt)",
        ),
    ]
}
CHOSEN_FORMATS = ("pairs", "sharegpt", "alpaca")  # what --format takes besides auto; kto is only detected


def pair_format_of(record: dict) -> str:
    """The name of the pair format ``record`` has, or an InputError saying why none."""
    for fmt in PAIR_FORMATS.values():
        if fmt.looks_like(record):
            return fmt.name
    if _has_any(record, "messages", "conversations", "trace", "trajectory", "output"):
        raise InputError(
            "these records hold no 'chosen'/'rejected' response: trajectories for supervised fine-tuning "
            "go to data_preprocess/convert_traces.py"
        )
    keys = ", ".join(sorted(map(str, record))[:12]) or "none"
    raise InputError(
        f"no pair format has these keys ({keys}): pairs (prompt, chosen, rejected), sharegpt (conversations, "
        "chosen, rejected), alpaca (instruction, chosen, rejected)"
    )


# --- writing --------------------------------------------------------------------------


def _needs_tool_fields(pair: dict) -> bool:
    return "tools" in pair or any("tool_calls" in m for key in ("prompt", "chosen", "rejected") for m in pair[key])


def _as_json_text(pair: dict) -> dict:
    def messages(key):
        return [{**m, "tool_calls": json_or_none(m.get("tool_calls"))} for m in pair[key]]

    return {
        **pair,
        **{key: messages(key) for key in ("prompt", "chosen", "rejected")},
        "tools": json_or_none(pair.get("tools")),
    }


class PairWriter:
    """Writes pairs to ``path`` in ``PAIR_SCHEMA`` until one has tool calls or function
    schemas; the file written so far is then rewritten in ``TOOL_PAIR_SCHEMA``, which the
    rest follows."""

    def __init__(self, path: str):
        self.path = path
        self.with_tools = False
        self.writer = pq.ParquetWriter(path, PAIR_SCHEMA)

    def write(self, pairs: list[dict]) -> None:
        if not self.with_tools and any(map(_needs_tool_fields, pairs)):
            self._switch_to_tool_fields()
        if self.with_tools:
            table = pa.Table.from_pylist([_as_json_text(p) for p in pairs], schema=_TOOL_PAIR_ROWS)
            self.writer.write_table(table.cast(TOOL_PAIR_SCHEMA))
        else:
            self.writer.write_table(pa.Table.from_pylist(pairs, schema=PAIR_SCHEMA))

    def _switch_to_tool_fields(self) -> None:
        self.writer.close()
        written = pq.read_table(self.path)
        self.writer = pq.ParquetWriter(self.path, TOOL_PAIR_SCHEMA)
        self.with_tools = True
        if written.num_rows:  # a struct cast adds the missing tool_calls field as nulls
            with_tools = written.append_column("tools", pa.nulls(written.num_rows, pa.string()))
            self.writer.write_table(with_tools.cast(TOOL_PAIR_SCHEMA))

    def close(self) -> None:
        self.writer.close()


BATCH_PAIRS = 1024  # pairs per parquet row group


def _parsed(fmt: PairFormat, record, location: str) -> dict:
    """The pair of one record, or the TraceError saying why there is none."""
    if isinstance(record, TraceError):  # a line that is not JSON
        raise record
    if not isinstance(record, dict):
        raise TraceError("record is not a JSON object")
    try:
        return fmt.parse(record, location)
    except (RecursionError, ValueError) as exc:  # TraceError too: a ValueError
        if isinstance(exc, TraceError) or (reason := unreadable_reason(exc)) is None:
            raise
        raise TraceError(reason) from None


def _reason_key(reason: str) -> str:
    """The reason as counted in the report: duplicates as one reason, long reasons cut."""
    if reason.startswith("duplicate pair_id"):
        return "duplicate pair_id"
    return reason if len(reason) < 160 else reason[:157] + "..."


def convert_pairs(
    input_file: str,
    output_file: str,
    input_format: str = "auto",
    on_detected: Callable[[PairFormat, str], None] | None = None,
) -> dict:
    """Convert a pair file to ``output_file`` (parquet, ``PAIR_SCHEMA`` or, with tool calls,
    ``TOOL_PAIR_SCHEMA``); returns the report, also written to ``output_file +
    ".report.json"`` beside the rejects. ``input_format``: one of ``PAIR_FORMATS`` or
    ``auto``: told from the first JSON object, the report says which and where, and
    ``on_detected(format, location)`` hears it at once (before any record is refused)."""
    if input_format != "auto" and input_format not in PAIR_FORMATS:
        raise InputError(f"unknown pair format {input_format!r} (one of auto, {', '.join(CHOSEN_FORMATS)})")
    check_output_file(output_file)
    rejects_file = output_file + ".rejects.jsonl"
    outputs = OutputSet(output_file + ".report.json", [output_file, rejects_file], inputs=[input_file])
    fmt = None if input_format == "auto" else PAIR_FORMATS[input_format]
    detected_at = None
    first_location: dict[str, str] = {}  # pair_id -> where the converted pair with that id was
    rejected_by_reason: Counter = Counter()
    records_in = 0
    batch: list[dict] = []
    writer = None
    with outputs:  # an unreadable input, a full disk or an interrupt leaves no temporary files
        try:
            writer = PairWriter(outputs.tmp(output_file))
            with open(outputs.tmp(rejects_file), "w", encoding="utf-8") as rejects:
                for location, record in read_records(input_file):
                    records_in += 1
                    if fmt is None and isinstance(record, dict):
                        try:
                            fmt, detected_at = PAIR_FORMATS[pair_format_of(record)], location
                        except InputError as exc:
                            raise InputError(f"{input_file}, {location}: {exc}") from None
                        if on_detected:
                            on_detected(fmt, location)
                    try:
                        pair = _parsed(fmt, record, location)
                        if pair["pair_id"] in first_location:
                            raise TraceError(
                                f"duplicate pair_id {pair['pair_id']!r} (first at {first_location[pair['pair_id']]})"
                            )
                    except TraceError as exc:
                        rejected_by_reason[_reason_key(str(exc))] += 1
                        rejects.write(
                            reject_line(location, str(exc), None if isinstance(record, TraceError) else record)
                        )
                        continue
                    first_location[pair["pair_id"]] = location
                    batch.append(pair)
                    if len(batch) >= BATCH_PAIRS:
                        writer.write(batch)
                        batch = []
                if batch:
                    writer.write(batch)
        finally:
            if writer is not None:
                writer.close()
        records_rejected = sum(rejected_by_reason.values())
        report = outputs.commit(
            {
                "input_file": input_file,
                "format": fmt.name if fmt else input_format,
                "format_detected_at": detected_at,
                "records_in": records_in,
                "records_converted": records_in - records_rejected,
                "records_rejected": records_rejected,
                "rejected_by_reason": dict(rejected_by_reason.most_common()),
                "tool_fields": writer.with_tools,
            }
        )
    if report["records_converted"] == 0:
        raise InputError(no_records_message(input_file, report))
    return report
