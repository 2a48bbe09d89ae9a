"""Preference pairs: the parquet format preference training reads, and a converter for
users' own pair files.

Format (``PAIR_SCHEMA``): TRL's conversational preference format plus three columns.
- ``prompt``: the conversation before the response, chat messages ``{role, content}``;
- ``chosen``, ``rejected``: the preferred and the dispreferred response to it, assistant
  messages ``{role: "assistant", content}``;
- ``pair_id``: a name unique within the file, for reports and rejects;
- ``source``: where the pair comes from (``"user"`` for a pair file, ``"teacher_cot"`` for
  the pairs ``convert_traces.py --format teacher_cot`` writes to ``OUT.pairs.parquet``);
- ``weight``: how much the pair counts in the loss (1.0 unless said otherwise).

Input (``convert_pairs``): JSONL, a JSON array or parquet, one pair per record:
- ``prompt``: a non-empty string (one user message) or a non-empty list of messages with
  roles system/user/assistant/tool, the last one not the assistant's;
- ``chosen``, ``rejected``: each a non-empty string (one assistant message) or a non-empty
  list of assistant messages; the two must differ;
- ``weight`` (optional): a finite number > 0, default 1.0;
- ``pair_id`` (optional): a string or an integer, default the record's location
  (``line 3``); a pair_id seen before is rejected;
- ``source`` (optional): a string, default ``"user"``.
Text follows the rules of the trace formats (``afm_trainer.traces.formats``): no text
holds a reserved chat token (``<|im_end|>``...), and the trace tags (``<think>``...) of
every assistant message are well formed. Every record is converted or written to
``OUT.rejects.jsonl`` with its location and reason; ``OUT.report.json`` counts them.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from afm_trainer.data.convert import no_records_message, read_records
from afm_trainer.data.parquet_io import InputError, check_output_file, remove_quietly
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

PROMPT_ROLES = ("system", "user", "assistant", "tool")
RESPONSE_ROLES = ("assistant",)


def _messages(record: dict, key: str, roles: tuple[str, ...], string_role: str) -> list[dict]:
    """``record[key]`` as chat messages; a plain string is one ``string_role`` message."""
    value = record.get(key)
    if value is not None and not isinstance(value, str | list):
        raise TraceError(f"{key!r} must be a string or a list of messages, got {type_name(value)}")
    if not value or (isinstance(value, str) and not value.strip()):
        raise TraceError(f"missing or empty {key!r}")
    if isinstance(value, str):
        return [_checked(string_role, value, f"{key!r}")]
    messages = []
    for i, message in enumerate(value):
        name = f"{key}[{i}]"
        if not isinstance(message, dict):
            raise TraceError(f"{name} must be a {{role, content}} object, got {type_name(message)}")
        role, content = message.get("role"), message.get("content")
        if role not in roles:
            raise TraceError(f"{name} has role {role!r} (allowed: {', '.join(roles)})")
        if content is not None and not isinstance(content, str):
            raise TraceError(f"{name}.content must be a string, got {type_name(content)}")
        if not content or not content.strip():
            raise TraceError(f"missing or empty {name}.content")
        if message.get("tool_calls"):  # kept only as role + content, so a call would be lost silently
            raise TraceError(f"{name} has tool_calls: write the call into its content")
        messages.append(_checked(role, content, f"{name}.content"))
    return messages


def _checked(role: str, content: str, name: str) -> dict:
    """A message obeying the trace formats' text rules: no reserved chat token anywhere,
    and an assistant turn's trace tags well formed (it is what the model learns to write)."""
    (well_formed_turn if role == "assistant" else plain_text)(content, name)
    return {"role": role, "content": content}


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


def parse_pair(record: dict, location: str) -> dict:
    """One input record as a row of ``PAIR_SCHEMA``, or a TraceError naming the field.
    ``location`` (``line 3``) is the pair_id when the record has none."""
    prompt = _messages(record, "prompt", PROMPT_ROLES, string_role="user")
    if prompt[-1]["role"] == "assistant":
        raise TraceError("the last message of 'prompt' is the assistant's: the response goes in 'chosen'/'rejected'")
    chosen = _messages(record, "chosen", RESPONSE_ROLES, string_role="assistant")
    rejected = _messages(record, "rejected", RESPONSE_ROLES, string_role="assistant")
    if chosen == rejected:
        raise TraceError("chosen and rejected are the same")
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "pair_id": _pair_id(record, location),
        "source": _source(record),
        "weight": _weight(record),
    }


def _reason_key(reason: str) -> str:
    """The reason as counted in the report: duplicates as one reason, long reasons cut."""
    if reason.startswith("duplicate pair_id"):
        return "duplicate pair_id"
    return reason if len(reason) < 80 else reason[:77] + "..."


def convert_pairs(input_file: str, output_file: str) -> dict:
    """Convert a pair file to ``output_file`` (parquet, ``PAIR_SCHEMA``); returns the report,
    also written to ``output_file + ".report.json"`` beside the rejects."""
    check_output_file(output_file)
    final_paths = [output_file, output_file + ".rejects.jsonl", output_file + ".report.json"]
    tmp_out, tmp_rejects, tmp_report = (path + ".tmp" for path in final_paths)
    first_location: dict[str, str] = {}  # pair_id -> where the converted pair with that id was
    rejected_by_reason: Counter = Counter()
    records_in = 0
    batch: list[dict] = []
    try:
        with pq.ParquetWriter(tmp_out, PAIR_SCHEMA) as writer, open(tmp_rejects, "w", encoding="utf-8") as rejects:
            for location, record in read_records(input_file):
                records_in += 1
                try:
                    if isinstance(record, TraceError):  # a line that is not JSON
                        raise record
                    if not isinstance(record, dict):
                        raise TraceError("record is not a JSON object")
                    pair = parse_pair(record, location)
                    if pair["pair_id"] in first_location:
                        raise TraceError(
                            f"duplicate pair_id {pair['pair_id']!r} (first at {first_location[pair['pair_id']]})"
                        )
                except TraceError as exc:
                    rejected_by_reason[_reason_key(str(exc))] += 1
                    kept = None if isinstance(record, TraceError) else record
                    rejects.write(json.dumps({"where": location, "reason": str(exc), "record": kept}, default=str))
                    rejects.write("\n")
                    continue
                first_location[pair["pair_id"]] = location
                batch.append(pair)
                if len(batch) >= 1024:
                    writer.write_table(pa.Table.from_pylist(batch, schema=PAIR_SCHEMA))
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=PAIR_SCHEMA))
        records_rejected = sum(rejected_by_reason.values())
        report = {
            "input_file": input_file,
            "records_in": records_in,
            "records_converted": records_in - records_rejected,
            "records_rejected": records_rejected,
            "rejected_by_reason": dict(rejected_by_reason.most_common()),
        }
        with open(tmp_report, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    except BaseException:  # an unreadable input or an interrupt leaves no temporary files
        remove_quietly(tmp_out, tmp_rejects, tmp_report)
        raise
    for tmp, final in zip((tmp_out, tmp_rejects, tmp_report), final_paths):
        os.replace(tmp, final)
    if report["records_converted"] == 0:
        raise InputError(no_records_message(input_file, report))
    return report
