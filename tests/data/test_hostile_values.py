"""Numbers and nesting Python cannot take at face value: NaN and Infinity scores, numbers
past a float's range, integers too long for text (Python refuses to convert more than 4300
digits), records nested 1000 deep. Each is one reject with its reason, never a traceback
and never a record that passes a filter it should fail."""

import json

import pyarrow.parquet as pq

from tests.data.cli import one_error_line, run_cli
from tests.data.test_convert_traces import SEARCH

DEEP = "[" * 1000 + "]" * 1000  # JSON nested 1000 deep
TOO_DEEP = "nested too deep to read or write (past Python's recursion limit)"
TOO_LONG = "holds an integer of more than 4300 digits"


def search(**fields) -> str:
    """SEARCH as JSON text, with ``fields`` given as raw JSON text (NaN, 1e400...)."""
    text = json.dumps(SEARCH)[:-1]
    return text + "".join(f", {json.dumps(key)}: {value}" for key, value in fields.items()) + "}"


def rejects_of(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_non_finite_huge_and_deep_values_of_a_json_array_are_one_reject_each(tmp_path, capsys):
    elements = [
        search(id='"good"', score="1"),
        search(id='"nan"', score="NaN"),
        search(id='"inf"', score="Infinity"),
        search(id='"-inf"', score="-Infinity"),
        search(id='"1e400"', score="1e400"),  # JSON's 1e400 is a float: inf
        search(id='"10**400"', score="1" + "0" * 400),  # an int past a float's range
        search(id="9" * 5000, score="1"),  # past Python's 4300 digits
        search(id='"deep"', score="1", question=DEEP),
        search(id='"low"', score="0.2"),
    ]
    src = tmp_path / "in.json"
    src.write_text("[" + ",\n".join(elements) + "]")
    out = tmp_path / "o.parquet"
    code, stderr = run_cli(
        "convert_traces",
        "--format",
        "search_agent",
        "--input_file",
        src,
        "--output_file",
        out,
        "--min_score",
        "0.5",
        capsys=capsys,
    )
    assert code == 0 and stderr == ""
    assert pq.read_table(out)["trajectory_id"].to_pylist() == ["good"]
    assert [(r["where"], r["reason"]) for r in rejects_of(f"{out}.rejects.jsonl")] == [
        ("index 1", "'score' must be a finite number, got nan"),
        ("index 2", "'score' must be a finite number, got inf"),
        ("index 3", "'score' must be a finite number, got -inf"),
        ("index 4", "'score' must be a finite number, got inf"),
        ("index 5", "'score' must be a finite number, got an integer of 401 digits"),
        ("index 6", TOO_LONG),
        ("index 7", TOO_DEEP),
        ("index 8", "score 0.2 below --min_score 0.5"),
    ]
    report = json.load(open(f"{out}.report.json"))
    assert (report["records_in"], report["records_converted"], report["records_rejected"]) == (9, 1, 8)


def test_a_nan_bound_is_refused(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(SEARCH) + "\n")
    code, stderr = run_cli(
        "convert_traces",
        "--format",
        "search_agent",
        "--input_file",
        src,
        "--output_file",
        tmp_path / "o.parquet",
        "--min_score",
        "nan",
        capsys=capsys,
    )
    assert code == 2 and one_error_line(stderr) == "error: --min_score must be a finite number, got nan"


def test_a_record_nested_1000_deep_is_one_reject_in_jsonl(tmp_path, capsys):
    user = {"role": "user", "content": "Weather?"}
    deep_call = '{"function": {"name": "weather", "arguments": {"city": DEEP}}}'.replace("DEEP", DEEP)
    lines = [
        json.dumps({"messages": [user, {"role": "assistant", "content": "Rain."}]}),
        '{"messages": [USER, {"role": "assistant", "content": "", "tool_calls": [CALL]}]}'.replace(
            "USER", json.dumps(user)
        ).replace("CALL", deep_call),
        '{"messages": DEEP}'.replace("DEEP", DEEP),
        '{"messages": [USER, {"role": "assistant", "content": "ok"}], "score": 1e400}'.replace(
            "USER", json.dumps(user)
        ),
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o.parquet"
    code, stderr = run_cli(
        "convert_traces", "--format", "messages", "--input_file", src, "--output_file", out, capsys=capsys
    )
    assert code == 0 and stderr == ""
    rejects = rejects_of(f"{out}.rejects.jsonl")
    assert [(r["where"], r["reason"]) for r in rejects] == [
        ("line 2", TOO_DEEP),
        ("line 3", "messages[0] must be an object, got a list"),
        ("line 4", "not valid JSON (number is infinity when parsed as double at column 106)"),
    ]
    # What cannot be copied back is named by its line; what can is copied.
    assert [r["record"] is None for r in rejects] == [True, True, True]
    assert [r.get("record_not_copied") for r in rejects] == [TOO_DEEP, TOO_DEEP, None]


def test_make_pairs_rejects_deep_and_huge_values_one_each(tmp_path, capsys):
    good = '{"prompt": "2+2?", "chosen": "4", "rejected": "5"}'
    elements = [
        good,
        '{"prompt": DEEP, "chosen": "4", "rejected": "5"}'.replace("DEEP", DEEP),
        '{"prompt": "2+3?", "chosen": "5", "rejected": "6", "pair_id": ' + "7" * 5000 + "}",
        '{"prompt": "2+4?", "chosen": "6", "rejected": "7", "weight": NaN}',
        '{"prompt": "2+5?", "chosen": "7", "rejected": "8", "weight": 1' + "0" * 400 + "}",
    ]
    src = tmp_path / "pairs.json"
    src.write_text("[" + ", ".join(elements) + "]")
    out = tmp_path / "p.parquet"
    code, stderr = run_cli("make_pairs", "--input_file", src, "--output_file", out, capsys=capsys)
    assert code == 0 and stderr == ""
    assert [(r["where"], r["reason"]) for r in rejects_of(f"{out}.rejects.jsonl")] == [
        ("index 1", TOO_DEEP),
        ("index 2", TOO_LONG),
        ("index 3", "'weight' must be a finite number > 0, got nan"),
        ("index 4", "'weight' must be a finite number > 0, got " + "1" + "0" * 400),
    ]
    # In JSON Lines the deep record parses; its reject names it and says why it is not copied.
    # its tool call's arguments too deep to write, or holding an integer too long for Python
    call = '{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": ARGS}}]}'
    lines = [
        good,
        '{"prompt": "2+2?", "chosen": "4", "rejected": DEEP}'.replace("DEEP", DEEP),
        '{"prompt": "2+2?", "chosen": [CALL, {"role": "tool", "content": "4"}, {"role": "assistant", "content": "4"}],'
        ' "rejected": "5"}'.replace("CALL", call.replace("ARGS", '{"x": DEEP}'.replace("DEEP", DEEP))),
        '{"prompt": "2+2?", "chosen": [CALL, {"role": "tool", "content": "4"}, {"role": "assistant", "content": "4"}],'
        ' "rejected": "5"}'.replace("CALL", call.replace("ARGS", json.dumps('{"x": ' + "8" * 5000 + "}"))),
    ]
    src = tmp_path / "pairs.jsonl"
    src.write_text("\n".join(lines) + "\n")
    code, stderr = run_cli("make_pairs", "--input_file", src, "--output_file", out, capsys=capsys)
    assert code == 0 and stderr == ""
    rejects = rejects_of(f"{out}.rejects.jsonl")
    assert [(r["where"], r["reason"], r.get("record_not_copied")) for r in rejects] == [
        ("line 2", "rejected[0] must be a {role, content} object, got a list", TOO_DEEP),
        ("line 3", TOO_DEEP, TOO_DEEP),
        ("line 4", TOO_LONG, None),  # the integer is text inside a string: the record is copied
    ]
    assert rejects[2]["record"]["rejected"] == "5"


def test_a_deep_qa_file_line_is_one_reject(tmp_path, capsys):
    lines = [
        '{"question": "Who wrote Hamlet?", "answer": "Shakespeare"}',
        '{"question": DEEP, "answer": "x"}'.replace("DEEP", DEEP),
        '{"question": "Largest planet?", "answer": "Jupiter", "id": DEEP}'.replace("DEEP", DEEP),
        '{"question": "Smallest prime?", "answer": "2"}',
    ]
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(lines) + "\n")
    code, stderr = run_cli("make_rl_data", "--suite", "qa", "--qa_file", qa, "--out", tmp_path / "rl", capsys=capsys)
    assert code == 0, stderr
    rejects = rejects_of(tmp_path / "rl" / "rejects.jsonl")
    assert [(r["where"], r["line"], r["reason"], r["record_not_copied"]) for r in rejects] == [
        ("line 2", 2, "missing or empty 'question'", TOO_DEEP),
        ("line 3", 3, TOO_DEEP, TOO_DEEP),
    ]
    rows = sum(pq.read_metadata(tmp_path / "rl" / f"{split}.parquet").num_rows for split in ("train", "val"))
    assert rows == 2
