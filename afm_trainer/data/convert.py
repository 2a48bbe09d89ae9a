"""Trajectory files -> verl SFT parquet, streaming, with every record accounted for.

Output, next to ``OUT.parquet``:
- ``OUT.parquet.rejects.jsonl``: one line per record not converted: where it was (``line N``
  of a JSONL file, ``index N`` of a JSON array or parquet file), the reason, the record;
- ``OUT.parquet.report.json``: counts in/out/rejected by reason, samples per trajectory,
  token-length percentiles (with a tokenizer), label balance before/after filtering;
- ``OUT.pairs.parquet`` (teacher_cot only): preference pairs (prompt, chosen, rejected)
  from records whose student draft is wrong, in the pair format of ``afm_trainer.data.pairs``.
They are one output set (``afm_trainer.data.parquet_io.OutputSet``): none may be an input,
all are written to temporary names and renamed when complete, the report last (naming
each file's sha256 and row count), and an earlier run's set is replaced whole.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial

import orjson  # verl's own dependency; parses JSON lines ~2x faster than json
import pyarrow as pa
import pyarrow.parquet as pq

from afm_trainer.data.parquet_io import (
    InputError,
    OutputSet,
    UsageError,
    check_output_file,
    reject_line,
    unreadable_reason,
)
from afm_trainer.models.special_tokens import ROLE_TOKENS, first_of, special_tokens_of
from afm_trainer.traces.chat import REASONING, UNTRAINED_TAGS
from afm_trainer.traces.formats import MODES, TraceError, difficulty_of, preference_pair, role_token, to_samples
from afm_trainer.traces.registry import FORMATS, UnknownFormat, detect_format

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string()), ("train", pa.bool_())])
SCHEMA = pa.schema(
    [
        ("messages", pa.list_(MESSAGE)),
        ("trajectory_id", pa.string()),  # prepare_train_val.py splits by it
        ("step", pa.int32()),
        ("answer", pa.string()),
        ("source_format", pa.string()),
        ("score", pa.float64()),  # the record's, if any: filtering and curriculum keys
        ("difficulty", pa.float64()),
    ]
)
# The chat formats' samples also carry each assistant turn's calls and spans of tool
# output (character offsets, never trained), and the conversation's function schemas,
# as JSON text: parquet would merge the schemas of different tools into
# one struct with null fields, and the template would render those nulls.
# ``afm_trainer.data.sft_dataset`` decodes them for the chat template.
CHAT_MESSAGE = pa.struct([*MESSAGE, ("tool_calls", pa.string()), ("untrained_spans", pa.string())])
CHAT_SCHEMA = pa.schema([("messages", pa.list_(CHAT_MESSAGE)), *list(SCHEMA)[1:], ("tools", pa.string())])

# verl's own MultiTurnSFTDataset trains every assistant message whole: it honours neither
# ``train`` nor spans. A file in which some assistant text is context names its column
# CONTEXT_MESSAGES instead, so that verl's dataset refuses it (KeyError: 'messages')
# rather than training the context; AgentSFTDataset reads either name.
CONTEXT_MESSAGES = "messages_with_untrained_turns"


def has_untrained_assistant_text(messages: list[dict]) -> bool:
    """Whether verl's own dataset would train text of these messages that afm-trainer does not."""
    return any(
        m["role"] == "assistant" and (m.get("train") is False or m.get("untrained_spans") not in (None, [], "[]"))
        for m in messages
    )


def untrained_assistant_samples(samples: list[list[dict]], mode: str, role: str | None) -> int:
    """How many of a trajectory's samples hold assistant text that is context."""
    if mode == "stepwise" and role is None and samples:  # each sample after the first has earlier turns as context
        return len(samples) - 1 + has_untrained_assistant_text(samples[0])
    return sum(map(has_untrained_assistant_text, samples))


def messages_column(column_names) -> str:
    """The name under which a file holds its messages."""
    return CONTEXT_MESSAGES if CONTEXT_MESSAGES in column_names else "messages"


def with_messages_column(schema: pa.Schema, name: str) -> pa.Schema:
    """``schema`` with its messages column called ``name``."""
    index = schema.get_field_index(messages_column(schema.names))
    return schema.set(index, schema.field(index).with_name(name))


def rename_messages_column(path: str, name: str) -> None:
    """Rewrite a parquet file, row group by row group, with its messages column called ``name``."""
    source = pq.ParquetFile(path)
    schema = with_messages_column(source.schema_arrow, name)
    with pq.ParquetWriter(path + ".renamed", schema) as writer:
        for group in range(source.num_row_groups):
            writer.write_table(source.read_row_group(group).rename_columns(schema.names))
    os.replace(path + ".renamed", path)


def json_or_none(value) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark some editors put first


class SampleBuffer:
    """Samples gathered column by column and written as one parquet row group.

    Building flat columns and assembling the nested ``messages`` column from offsets is
    several times faster than letting pyarrow walk a list of row dicts."""

    def __init__(self, schema: pa.Schema = SCHEMA):
        self.schema = schema
        self.chat = "tools" in schema.names
        self.offsets, self.roles, self.contents, self.trains, self.calls, self.spans = [0], [], [], [], [], []
        self.columns = {field.name: [] for field in list(schema)[1:]}

    def __len__(self):
        return len(self.offsets) - 1

    def add(self, messages: list[dict], **columns) -> None:
        for m in messages:
            self.roles.append(m["role"])
            self.contents.append(m["content"])
            self.trains.append(m["train"])
            if self.chat:
                self.calls.append(json_or_none(m.get("tool_calls")))
                self.spans.append(json_or_none(m.get("untrained_spans")))
        self.offsets.append(len(self.roles))
        for name, values in self.columns.items():
            values.append(columns[name])

    def write_to(self, writer: BackgroundParquetWriter) -> None:
        if not len(self):
            return
        fields = [
            pa.array(self.roles, pa.string()),
            pa.array(self.contents, pa.string()),
            pa.array(self.trains, pa.bool_()),
        ]
        if self.chat:
            fields += [pa.array(self.calls, pa.string()), pa.array(self.spans, pa.string())]
        messages = pa.StructArray.from_arrays(fields, fields=list(self.schema.field(0).type.value_type))
        arrays = [pa.ListArray.from_arrays(pa.array(self.offsets, pa.int32()), messages)]
        arrays += [pa.array(self.columns[f.name], f.type) for f in list(self.schema)[1:]]
        writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        self.__init__(self.schema)


class BackgroundParquetWriter:
    """``pq.ParquetWriter`` whose row groups are encoded, compressed and written in a second
    thread (pyarrow releases the GIL there) while the caller builds the next; at most one
    row group waits, so memory stays bounded. An error in the thread is raised at the next
    write or at close."""

    def __init__(self, path: str, schema: pa.Schema):
        self.writer = pq.ParquetWriter(path, schema)
        self.thread = ThreadPoolExecutor(max_workers=1)
        self.pending: Future | None = None

    def write_table(self, table: pa.Table) -> None:
        self._wait()
        self.pending = self.thread.submit(self.writer.write_table, table)

    def _wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._wait()
        finally:
            self.thread.shutdown()
            self.writer.close()


def read_records(path: str) -> Iterator[tuple[str, object]]:
    """Yield (location, record) pairs; a line that is not JSON yields (location, TraceError).

    ``path``: a JSONL file, a JSON array or a parquet file; a folder written by the
    ``datasets`` library's ``save_to_disk``; or a glob of such files (``data/*.jsonl``),
    read in name order, each record located by file and line. Globbed files are read here,
    not by ``datasets``' JSON loader, which fails a whole file on one bad line: each line
    is converted or rejected on its own."""
    if os.path.isfile(path):
        yield from _read_file(path)
    elif os.path.isdir(path):
        yield from _saved_dataset(path)
    elif glob.has_magic(path):
        files = sorted(f for f in glob.glob(path) if os.path.isfile(f))
        if not files:
            raise InputError(f"no file matches {path}")
        for file in files:
            for location, record in _read_file(file):
                yield f"{file} {location}", record
    else:
        raise InputError(
            f"input file not found: {path}"
            + (
                " (datasets are not downloaded from a hub: save one with the datasets library's save_to_disk, "
                "or export it to JSONL, and give that path)"
                if re.fullmatch(r"[\w.-]+/[\w.-]+", path)
                else ""
            )
        )


def _saved_dataset(path: str) -> Iterator[tuple[str, object]]:
    from datasets import Dataset, load_from_disk

    try:
        dataset = load_from_disk(path)
    except FileNotFoundError:
        raise InputError(f"{path} is a folder, but not one written by the datasets library's save_to_disk") from None
    if not isinstance(dataset, Dataset):
        splits = list(dataset)
        raise InputError(f"{path} holds the splits {', '.join(splits)}: give one of them, e.g. {path}/{splits[0]}")
    for index, record in enumerate(dataset):
        yield f"index {index}", record


def _read_file(path: str) -> Iterator[tuple[str, object]]:
    """One file's records; an error reading it (no permission, a bad disk) is the file's InputError."""
    try:
        yield from _file_records(path)
    except OSError as exc:  # raised by reading only: the consumer's errors are not thrown in here
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def _file_records(path: str) -> Iterator[tuple[str, object]]:
    if path.endswith(".parquet"):
        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:
            raise InputError(f"{path} is not a readable parquet file: {exc}") from None
        index = 0
        for batch in parquet.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                yield f"index {index}", record
                index += 1
        return
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(BOM).lstrip()
    if head.startswith(b"["):
        yield from _json_array(path)
        return
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if number == 1:
                line = line.removeprefix(BOM)
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield f"line {number}", TraceError(f"not UTF-8 text (byte {exc.start})")
                continue
            try:
                yield f"line {number}", orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                if number == 1 and text.strip() == "{":
                    _refuse_multiline_object(path)
                yield f"line {number}", TraceError(f"not valid JSON ({exc.msg} at column {exc.colno})")


_SPACE = re.compile(r"[ \t\n\r]*")
_VALUE_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[][{},]', re.S)  # a string, a bracket or a comma


def _value_end(text: str, start: int) -> int:
    """Where the JSON value starting at ``start`` ends, found without decoding it (for a
    value too deep or too large to decode)."""
    depth = 0
    for match in _VALUE_TOKEN.finditer(text, start):
        token = match.group()
        if token in "[{":
            depth += 1
        elif token in "]}" and depth:
            depth -= 1
            if not depth:
                return match.end()
        elif token in ",]}" and not depth:
            return match.start()
    return len(text)


def _json_array(path: str) -> Iterator[tuple[str, object]]:
    """A JSON array's elements, decoded one by one: an element Python cannot hold (nested
    too deep, an integer of too many digits) is that index's TraceError, not the file's;
    a syntax error anywhere makes the file unreadable (InputError)."""
    with open(path, "rb") as f:
        data = f.read().removeprefix(BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    del data

    def invalid(message: str, position: int) -> InputError:
        return InputError(f"{path} is not valid JSON: {json.JSONDecodeError(message, text, position)}")

    decoder = json.JSONDecoder()
    position = _SPACE.match(text, _SPACE.match(text).end() + 1).end()  # past "["
    index = 0
    while not (index == 0 and text.startswith("]", position)):  # "[]" has no element
        try:
            record, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise invalid(exc.msg, exc.pos) from None
        except (RecursionError, ValueError) as exc:
            if (reason := unreadable_reason(exc)) is None:
                raise
            record, end = TraceError(reason), _value_end(text, position)
        yield f"index {index}", record
        index += 1
        position = _SPACE.match(text, end).end()
        if text.startswith("]", position):
            break
        if not text.startswith(",", position):
            raise invalid("Expecting ',' delimiter", position)
        position = _SPACE.match(text, position + 1).end()
    if (after := _SPACE.match(text, position + 1).end()) != len(text):
        raise invalid("Extra data", after)


def _refuse_multiline_object(path: str) -> None:
    """A file that is one JSON object over several lines is not JSON Lines: counting each
    of its lines as a broken record would say nothing useful."""
    try:
        with open(path, "rb") as f:
            json.loads(f.read().removeprefix(BOM).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: JSONDecodeError, a too long integer
        return  # really broken lines: each is a reject
    raise InputError(
        f"{path} is one JSON object spread over several lines, not JSON Lines: "
        "write one record per line, or a JSON array of records"
    )


def rendered_texts(trajectory) -> Iterator[str]:
    """Every text of a trajectory that the chat template renders: contents, calls, tool schemas."""
    for m in trajectory.prompt + trajectory.turns:
        yield m["content"]
        if m.get("tool_calls"):
            yield json.dumps(m["tool_calls"], ensure_ascii=False)
    if trajectory.tools:
        yield json.dumps(trajectory.tools, ensure_ascii=False)


def label_of(answer: str | None) -> str | None:
    return None if answer is None else answer.strip().lower()


def is_categorical(labels: Counter) -> bool:
    """Answers look like classes (yes/no, A/B/C...) rather than free text."""
    n = sum(labels.values())
    return n > 0 and 1 < len(labels) <= max(2, min(10, n // 5))


def _balance_plan(labels: dict[str, str], mode: str, seed: int) -> dict[str, int]:
    """{location: copies} after down- or up-sampling every label to the same count."""
    by_label: dict[str, list[str]] = {}
    for location, label in labels.items():
        by_label.setdefault(label, []).append(location)
    rng = random.Random(seed)
    target = (min if mode == "downsample" else max)(len(v) for v in by_label.values())
    plan = {}
    for locations in by_label.values():
        if mode == "downsample":
            for location in rng.sample(locations, target):
                plan[location] = 1
        else:
            for i in range(target):  # every record once, then repeats in order
                location = locations[i % len(locations)]
                plan[location] = plan.get(location, 0) + 1
    return plan


def _percentiles(values: list[int]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "p50": pick(0.5),
        "p90": pick(0.9),
        "p99": pick(0.99),
        "max": ordered[-1],
        "mean": sum(values) / len(values),
    }


def convert(
    input_file: str,
    output_file: str,
    fmt: str,
    mode: str = "multiturn",
    tokenizer_path: str | None = None,
    min_score: float | None = None,
    balance: str = "none",
    dedup: bool = False,
    seed: int = 0,
    role: str | None = None,
    reasoning: str = "train",
    untrained_tags: tuple[str, ...] = UNTRAINED_TAGS,
    agent_roles: dict[str, str] | None = None,
    rename: Callable[[dict], dict] | None = None,
) -> dict:
    """Convert one trajectory file; returns the report (also written beside the output).
    ``fmt``: a name of ``afm_trainer.traces.registry.FORMATS``, or ``auto`` (told from the
    first record; the report says which). ``mode`` and ``role``: as
    ``afm_trainer.traces.formats.to_samples`` takes them. ``reasoning`` (chat formats):
    ``train`` an assistant's ``reasoning_content`` as ``<think>...</think>``, or ``drop`` it;
    ``untrained_tags`` (chat formats): the tags of tool output written inside a turn;
    ``agent_roles`` (agent_chain): other agent names mapped onto the known roles;
    ``rename``: applied to each record before it is parsed (a dataset_info.json entry's
    column and tag names, ``afm_trainer.traces.dataset_info``)."""
    detected_at = None
    if fmt == "auto":
        try:
            fmt, detected_at = detect_format(read_records(input_file))
        except UnknownFormat as exc:
            raise InputError(f"{input_file}: cannot tell the format: {exc}") from None
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r} (choose from auto, {', '.join(FORMATS)})")
    if bad := [tag for tag in untrained_tags if not re.fullmatch(r"[A-Za-z][\w-]*", tag)]:
        raise InputError(f"untrained tags are tag names such as observation, got {bad[0]!r}")
    if reasoning not in REASONING:
        raise InputError(f"unknown reasoning option {reasoning!r} (one of {', '.join(REASONING)})")
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    if min_score is not None and not math.isfinite(min_score):  # every score passes a NaN bound
        raise UsageError(f"--min_score must be a finite number, got {min_score}")
    if role is not None and (fmt != "agent_chain" or role not in ROLE_TOKENS or mode == "one_call"):
        raise InputError(
            f"role {role!r}: a role is one of {', '.join(ROLE_TOKENS)}, for agent_chain data in multiturn or stepwise mode"
        )
    check_output_file(output_file)
    chat = FORMATS[fmt].chat
    unknown_roles = [r for r in (agent_roles or {}).values() if role_token(r) not in ROLE_TOKENS]
    if unknown_roles:
        raise InputError(f"--agent_roles maps onto {unknown_roles[0]!r}; the roles are {', '.join(ROLE_TOKENS)}")
    options = {"reasoning": reasoning, "untrained_tags": tuple(untrained_tags), "agent_roles": agent_roles}
    parse = partial(FORMATS[fmt].parse, **{k: v for k, v in options.items() if k in FORMATS[fmt].options})
    tokenizer = None
    if tokenizer_path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    # The formats refuse anything shaped <|name|>; a tokenizer also knows its other ones.
    special = special_tokens_of(tokenizer) if tokenizer is not None else []

    labels_parsed: Counter = Counter()  # every parsed record's label, before any filter

    def parsed(record) -> tuple | str:
        """(trajectory, its samples), or the reason the record is rejected."""
        if not isinstance(record, dict):
            return "record is not a JSON object"
        try:
            trajectory = parse(rename(record) if rename else record)
            trajectory.meta["difficulty"] = difficulty_of(record)
            samples = to_samples(trajectory, mode, role)  # one_call refuses tool turns between model turns
            texts = list(rendered_texts(trajectory))  # also proves the calls and tools can be written
        except TraceError as exc:
            return str(exc)
        except (RecursionError, ValueError) as exc:  # a field nested too deep, an integer too long
            if (reason := unreadable_reason(exc)) is None:
                raise
            return reason
        if special and (token := next(filter(None, (first_of(special, t) for t in texts)), None)):
            return f"holds {token!r}, a special token of the tokenizer (never trained as one)"
        return trajectory, samples

    def accepted() -> Iterator[tuple[str, object, tuple | str]]:
        """(location, record, (trajectory, its samples) or the reason it is rejected) for every input record."""
        seen: dict[str, str] = {}
        labels_parsed.clear()
        for location, record in read_records(input_file):
            if isinstance(record, TraceError):
                yield location, None, str(record)
                continue
            result = parsed(record)
            if isinstance(result, str):
                yield location, record, result
                continue
            trajectory, samples = result
            labels_parsed[label_of(trajectory.answer)] += 1
            if min_score is not None and (trajectory.score is None or trajectory.score < min_score):
                yield location, record, f"score {trajectory.score} below --min_score {min_score}"
                continue
            if dedup:
                key = hashlib.sha1(json.dumps([trajectory.prompt, trajectory.turns]).encode()).hexdigest()
                if key in seen:
                    yield location, record, f"duplicate of {seen[key]}"
                    continue
                seen[key] = location
            yield location, record, (trajectory, samples)

    outputs = OutputSet(
        output_file + ".report.json",
        [output_file, output_file + ".rejects.jsonl", *([pairs_file(output_file)] if fmt == "teacher_cot" else [])],
        inputs=[input_file],
        companions=[pairs_file(output_file)],
    )
    # Balancing needs every label first: one cheap pass records them, the next writes.
    plan = None
    if balance != "none":
        labels = {loc: label_of(result[0].answer) for loc, _, result in accepted() if not isinstance(result, str)}
        if not is_categorical(Counter(labels.values())):
            raise InputError("--balance needs categorical answers (yes/no, A/B/C...); these look like free text")
        plan = _balance_plan(labels, balance, seed)

    tmp_out, tmp_rejects = outputs.tmp(output_file), outputs.tmp(output_file + ".rejects.jsonl")
    outputs.extra_temporaries.append(tmp_out + ".renamed")
    rejects_by_reason: Counter = Counter()
    labels_out: Counter = Counter()
    records_in = trajectories_out = samples_out = context_samples = 0
    samples_per_trajectory: list[int] = []
    token_lengths: list[int] = []
    # Stepwise and per-role samples hold earlier turns as context; if the guess is wrong
    # the column is renamed at the end.
    column = CONTEXT_MESSAGES if mode == "stepwise" or role is not None else "messages"
    schema = with_messages_column(CHAT_SCHEMA if chat else SCHEMA, column)
    buffer = SampleBuffer(schema)
    pairs: list[dict] = []
    with outputs:  # an unreadable input, a full disk or an interrupt leaves no temporary files
        with BackgroundParquetWriter(tmp_out, schema) as writer, open(tmp_rejects, "w", encoding="utf-8") as rejects:
            for location, record, result in accepted():
                records_in += 1
                if isinstance(result, str):
                    reason = result.split(" of ")[0] if result.startswith("duplicate") else result
                    rejects_by_reason[reason if len(reason) < 80 else reason[:77] + "..."] += 1
                    rejects.write(reject_line(location, result, record))
                    continue
                trajectory, samples = result
                label = label_of(trajectory.answer)
                copies = 1 if plan is None else plan.get(location, 0)
                if copies == 0:
                    rejects_by_reason["dropped by --balance downsample"] += 1
                    rejects.write(reject_line(location, "dropped by --balance downsample", record))
                    continue
                if fmt == "teacher_cot" and (pair := preference_pair(trajectory)):
                    pairs.append({**pair, "pair_id": trajectory.id or location, "source": "teacher_cot", "weight": 1.0})
                for copy in range(copies):
                    trajectory_id = trajectory.id or location
                    for step, messages in enumerate(samples):
                        buffer.add(
                            messages,
                            trajectory_id=trajectory_id if copy == 0 else f"{trajectory_id}#copy{copy}",
                            step=step,
                            answer=trajectory.answer,
                            source_format=fmt,
                            score=trajectory.score,
                            difficulty=trajectory.meta["difficulty"],
                            **({"tools": json_or_none(trajectory.tools)} if chat else {}),
                        )
                        if tokenizer is not None:
                            rendered = tokenizer.apply_chat_template(messages, tools=trajectory.tools, tokenize=True)
                            token_lengths.append(len(rendered["input_ids"]))
                    trajectories_out += 1
                    samples_out += len(samples)
                    context_samples += untrained_assistant_samples(samples, mode, role)
                    samples_per_trajectory.append(len(samples))
                    labels_out[label] += 1
                if len(buffer) >= 2048:
                    buffer.write_to(writer)
            buffer.write_to(writer)
        written_column, column = column, CONTEXT_MESSAGES if context_samples else "messages"
        if column != written_column:
            rename_messages_column(tmp_out, column)
        if fmt == "teacher_cot":
            # Imported here: pairs.py reads its input with this module's read_records.
            from afm_trainer.data.pairs import PAIR_SCHEMA

            pq.write_table(pa.Table.from_pylist(pairs, schema=PAIR_SCHEMA), outputs.tmp(pairs_file(output_file)))
        categorical = is_categorical(labels_parsed)
        report = outputs.commit(
            {
                "input_file": input_file,
                "format": fmt,
                "format_detected_at": detected_at,
                "mode": mode,
                "role": role,
                "untrained_tags": list(untrained_tags) if chat else None,
                "records_in": records_in,
                "records_converted": records_in - sum(rejects_by_reason.values()),
                "records_rejected": sum(rejects_by_reason.values()),
                "rejected_by_reason": dict(rejects_by_reason.most_common()),
                "trajectories_out": trajectories_out,
                "samples_out": samples_out,
                "samples_with_untrained_assistant_turns": context_samples,  # these need AgentSFTDataset
                "messages_column": column,
                "samples_per_trajectory": _percentiles(samples_per_trajectory),
                "preference_pairs": len(pairs) if fmt == "teacher_cot" else None,
                "token_length": _percentiles(token_lengths),
                "label_balance": {
                    "before_filtering": dict(labels_parsed) if categorical else None,
                    "after_filtering": dict(labels_out) if categorical else None,
                },
            }
        )
    if report["records_converted"] == 0:
        raise InputError(no_records_message(input_file, report))
    return report


def pairs_file(output_file: str) -> str:
    """Where a teacher_cot conversion writes its preference pairs, beside ``output_file``."""
    return output_file.removesuffix(".parquet") + ".pairs.parquet"


def no_records_message(input_file: str, report: dict) -> str:
    """Why nothing could be converted, with the reasons counted."""
    if report["records_in"] == 0:
        return f"no records in {input_file} (an empty file?)"
    reasons = "; ".join(f"{count} {reason}" for reason, count in report["rejected_by_reason"].items())
    return f"none of the {report['records_in']} records of {input_file} could be converted: {reasons}"
