"""Broken and hostile input: every record converted or rejected with its reason, one
clear error line where the input is unusable as a whole, no temporary files left."""

import json
import os
import random
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from afm_trainer.data.convert import convert
from afm_trainer.data.parquet_io import InputError
from afm_trainer.traces.formats import FORMATS
from tests.conftest import REPO
from tests.data.test_convert_traces import CHAIN, SEARCH

CONVERT = os.path.join(REPO, "data_preprocess", "convert_traces.py")
GOOD = {
    "search_agent": SEARCH,
    "agent_chain": CHAIN,
    "teacher_cot": {"question": "Is 4 even?", "answer": "yes", "teacher_output": "4 ends in 4."},
    "messages": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
}


def cli(*args):
    return subprocess.run([sys.executable, CONVERT, *map(str, args)], capture_output=True, text=True, timeout=120)


def leftovers(folder) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


def test_an_invalid_utf8_byte_is_one_reject_with_its_line(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(json.dumps(SEARCH).encode() + b'\n{"id": "\xff"}\n' + json.dumps(SEARCH).encode() + b"\n")
    report = convert(str(src), str(tmp_path / "out.parquet"), "search_agent")
    assert report["records_in"] == 3 and report["records_converted"] == 2
    rejects = [json.loads(line) for line in open(tmp_path / "out.parquet.rejects.jsonl")]
    assert [(r["where"], r["reason"]) for r in rejects] == [("line 2", "not UTF-8 text (byte 8)")]
    assert not leftovers(tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "no records in"),
        (b"\n\n", "no records in"),
        (json.dumps(SEARCH, indent=2).encode(), "one JSON object spread over several lines"),
        (b'{"question": 1}\n{"trace": "x"}\n', "none of the 2 records"),
        (b"[1, 2", "is not valid JSON"),
    ],
)
def test_input_with_nothing_usable_fails_with_one_line(tmp_path, content, message):
    src = tmp_path / "in.jsonl"
    src.write_bytes(content)
    result = cli("--format", "search_agent", "--input_file", src, "--output_file", tmp_path / "out.parquet")
    assert result.returncode == 1, result.stdout
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and message in result.stderr
    assert not leftovers(tmp_path)


def test_a_byte_order_mark_is_not_part_of_the_first_record(tmp_path):
    bom = b"\xef\xbb\xbf"
    for name, body in (
        ("lines.jsonl", json.dumps(SEARCH).encode() + b"\n"),
        ("array.json", json.dumps([SEARCH]).encode()),
    ):
        src = tmp_path / name
        src.write_bytes(bom + body)
        report = convert(str(src), str(tmp_path / f"{name}.parquet"), "search_agent")
        assert report["records_converted"] == 1, name


def test_a_field_of_the_wrong_type_is_named_as_such(tmp_path):
    def reasons(fmt, records):
        src = tmp_path / f"{fmt}.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in [*records, GOOD[fmt]]))
        convert(str(src), str(tmp_path / f"{fmt}.parquet"), fmt)
        return [json.loads(line)["reason"] for line in open(tmp_path / f"{fmt}.parquet.rejects.jsonl")]

    assert reasons("search_agent", [{**SEARCH, "question": 42}, {**SEARCH, "trace": "searched"}]) == [
        "'question' must be a string, got a number",
        "'trace' must be a list of steps, got str",
    ]
    assert reasons("teacher_cot", [{**GOOD["teacher_cot"], "answer": 7}]) == ["'answer' must be a string, got a number"]


def test_output_paths_are_checked_or_made(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(SEARCH) + "\n")
    assert (
        cli("--format", "search_agent", "--input_file", src, "--output_file", tmp_path / "new" / "o.parquet").returncode
        == 0
    )
    folder = cli("--format", "search_agent", "--input_file", src, "--output_file", tmp_path)
    assert folder.returncode == 1 and folder.stderr.startswith("error: ") and "is a folder" in folder.stderr


def test_prepare_train_val_refuses_bad_shards_and_a_file_as_output_folder(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({**SEARCH, "id": f"t{i}"}) + "\n" for i in range(5)))
    convert(str(src), str(tmp_path / "c.parquet"), "search_agent")
    script = os.path.join(REPO, "data_preprocess", "prepare_train_val.py")

    def prepare(*args):
        argv = [sys.executable, script, "--input_file", tmp_path / "c.parquet", *args]
        return subprocess.run(list(map(str, argv)), capture_output=True, text=True)

    zero = prepare("--output_dir", tmp_path / "o", "--shards", "0")
    assert zero.returncode == 1 and "--shards must be 1 or more" in zero.stderr
    (tmp_path / "file").write_text("x")
    as_file = prepare("--output_dir", tmp_path / "file")
    assert as_file.returncode == 1 and as_file.stderr.startswith("error: ") and "is a file" in as_file.stderr
    many = prepare("--output_dir", tmp_path / "many", "--shards", "100")
    assert many.returncode == 0, many.stderr
    sizes = [pq.read_metadata(tmp_path / "many" / name).num_rows for name in os.listdir(tmp_path / "many")]
    assert sum(sizes) == 5 and min(sizes) == 1  # one shard per row at most, none empty


def test_a_context_without_a_user_turn_is_a_rejected_summary(tmp_path):
    from afm_trainer.data.summaries import add_summaries

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(SEARCH) + "\n")
    convert(str(src), str(tmp_path / "steps.parquet"), "search_agent", mode="stepwise")
    table = pq.read_table(tmp_path / "steps.parquet").to_pylist()
    table[0]["messages"] = [{**m, "role": "system"} if m["role"] == "user" else m for m in table[0]["messages"]]
    import pyarrow as pa

    pq.write_table(
        pa.Table.from_pylist(table, schema=pq.read_schema(tmp_path / "steps.parquet")), tmp_path / "bad.parquet"
    )
    counts = add_summaries(str(tmp_path / "bad.parquet"), str(tmp_path / "out" / "s.parquet"))
    assert counts["rejected"] == 1 and counts["summarised"] == counts["samples"] - 1
    (reject,) = [json.loads(line) for line in open(tmp_path / "out" / "s.parquet.rejects.jsonl")]
    assert reject["where"] == "row 0" and "no user turn" in reject["reason"]


def test_a_recipe_refuses_an_out_dir_that_is_a_file(tmp_path, nano_model, starter_data):
    from tests.conftest import run_recipe

    (tmp_path / "file").write_text("x")
    result = run_recipe(1, tmp_path / "file", f"MODEL={nano_model}", f"TRAIN_FILES={starter_data[0]}", "DRY_RUN=1")
    assert (
        result.returncode == 2
        and result.stderr.strip() == f"error: OUT_DIR {tmp_path / 'file'} is a file, not a folder"
    )


def _mangled(rng: random.Random, record: dict) -> bytes:
    """One line of hostile input made from a good record."""
    text = json.dumps(record)
    kind = rng.randrange(5)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))).replace(b"\n", b"")
    if kind == 1:
        return text[: rng.randrange(1, len(text))].encode()
    if kind == 2:  # a known field with a value of another type
        key = rng.choice(list(record))
        return json.dumps({**record, key: rng.choice([None, 3, 2.5, True, [], {}, "", "x", [1, "a"]])}).encode()
    if kind == 3:
        return json.dumps(rng.choice([[], 3, "s", None, [record]])).encode()
    return text.encode()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("mode", ["multiturn", "stepwise"])
def test_fuzz_every_record_is_converted_or_rejected_without_a_traceback(tmp_path, fmt, mode):
    rng = random.Random(f"{fmt}:{mode}")
    lines = [json.dumps(GOOD[fmt]).encode()] + [_mangled(rng, GOOD[fmt]) for _ in range(200)]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.parquet"
    try:
        report = convert(str(src), str(out), fmt, mode)
    except InputError as exc:  # only ever "none could be converted"; the good first record rules that out
        pytest.fail(f"unexpected InputError: {exc}")
    records = sum(1 for line in lines if line.strip())
    rejects = sum(1 for _ in open(f"{out}.rejects.jsonl"))
    trajectories = pq.read_table(out, columns=["step"]).column(0).to_pylist().count(0)  # one first step each
    assert report["records_in"] == records == report["records_converted"] + rejects
    assert trajectories == report["trajectories_out"] == report["records_converted"]
    assert not leftovers(tmp_path)
