"""LLaMA-Factory's ``dataset_info.json``: a dataset's file, format, and its column and
tag names, so a dataset registered there converts under the name it already has.

    python data_preprocess/convert_traces.py --dataset_info data/dataset_info.json --dataset NAME ...

An entry (LLaMA-Factory's data/README.md) gives ``file_name`` (relative to the
dataset_info.json's folder), ``formatting`` (``alpaca``, the default, or ``sharegpt``),
``ranking`` (preference data: not an SFT set), ``columns`` (the record's names for
``messages``, ``system``, ``tools``, ``prompt``, ``query``, ``response``, ``history``,
``kto_tag``) and, for sharegpt, ``tags`` (the keys and values of a turn: ``role_tag``,
``content_tag``, ``user_tag``, ``assistant_tag``, ``observation_tag``, ``function_tag``,
``system_tag``). ``DatasetEntry.rename`` turns a record into the names the ``sharegpt``
and ``alpaca`` formats read; a turn whose role is none of the entry's tags keeps it, and
the format rejects it with its place named.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field


class DatasetInfoError(ValueError):
    """A dataset_info.json or entry that cannot be used; the message is one line."""


# LLaMA-Factory's column roles -> the keys the formats here read.
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools", "kto_tag": "kto_tag"}
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}
ALPACA_COLUMNS |= {"history": "history", "kto_tag": "kto_tag"}
# LLaMA-Factory's tag roles -> (their default, the ShareGPT name the sharegpt format reads).
TAG_DEFAULTS = {
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}


@dataclass
class DatasetEntry:
    name: str
    file: str
    format: str  # "sharegpt" or "alpaca"
    columns: dict[str, str] = field(default_factory=dict)  # the record's name -> the format's
    role_tag: str = "from"
    content_tag: str = "value"
    roles: dict[str, str] = field(default_factory=dict)  # the record's role value -> ShareGPT's

    def rename(self, record: dict) -> dict:
        if not isinstance(record, dict):
            return record
        out = {self.columns.get(key, key): value for key, value in record.items()}
        turns = out.get("conversations")
        if self.format == "sharegpt" and isinstance(turns, list):
            out["conversations"] = [self._turn(turn) for turn in turns]
        return out

    def _turn(self, turn):
        if not isinstance(turn, dict):
            return turn
        role = turn.get(self.role_tag)
        return {"from": self.roles.get(role, role), "value": turn.get(self.content_tag)}


def load_entry(path: str, name: str) -> DatasetEntry:
    """The entry ``name`` of a dataset_info.json, or DatasetInfoError saying why not."""
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetInfoError(f"cannot read {path}: {exc}") from None
    entry = info.get(name) if isinstance(info, dict) else None
    if not isinstance(entry, dict):
        raise DatasetInfoError(f"{path} has no dataset {name!r} (it has: {', '.join(list(info)[:20])})")
    if entry.get("ranking"):
        raise DatasetInfoError(f"dataset {name!r} is preference data (ranking: true): convert it with make_pairs.py")
    if not isinstance(entry.get("file_name"), str):
        raise DatasetInfoError(f"dataset {name!r} has no local file_name (hub datasets are not downloaded here)")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("sharegpt", "alpaca"):
        raise DatasetInfoError(f"dataset {name!r} has formatting {formatting!r} (sharegpt or alpaca)")
    defaults = SHAREGPT_COLUMNS if formatting == "sharegpt" else ALPACA_COLUMNS
    columns = entry.get("columns") or {}
    unknown = sorted(set(columns) - set(defaults))
    if unknown:
        raise DatasetInfoError(f"dataset {name!r}: columns {unknown} are not handled here (known: {sorted(defaults)})")
    tags = entry.get("tags") or {}
    roles = {tags.get(role, default): default for role, default in TAG_DEFAULTS.items()}
    return DatasetEntry(
        name=name,
        file=os.path.join(os.path.dirname(os.path.abspath(path)), entry["file_name"]),
        format=formatting,
        columns={record_key: defaults[role] for role, record_key in columns.items()},
        role_tag=tags.get("role_tag", "from"),
        content_tag=tags.get("content_tag", "value"),
        roles=roles,
    )
