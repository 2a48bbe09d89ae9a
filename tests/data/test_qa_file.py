"""make_rl_data.py --qa_file on Search-R1's and FlashRAG's QA files: JSONL, JSON arrays
and parquet, alias lists kept whole, every bad record a reject naming its field, and a
file that gives no row an error, not empty parquets."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from tests.data.test_rl_data import run

SAMPLE = os.path.join(REPO, "examples", "traces", "qa_golden_answers.jsonl")

# FlashRAG's shape: the same records in every file format below.
ALIAS_RECORDS = [
    {"id": "q-1", "question": "What is the capital of France?", "golden_answers": ["Paris", "City of Light"]},
    {"id": "q-2", "question": "Smallest prime number?", "golden_answers": ["2"]},
    {"id": "q-3", "question": "Tallest mountain?", "golden_answers": ["Mount Everest", "everest", "Everest."]},
    {"id": "q-4", "question": "Who wrote Hamlet?", "golden_answers": ["William Shakespeare", "Shakespeare"]},
]
# Written out by hand: one answer stays its plain text, several are their JSON list,
# aliases that normalise alike ("everest", "Everest.") are kept once.
ALIAS_TRUTHS = {
    "What is the capital of France?": '["Paris", "City of Light"]',
    "Smallest prime number?": "2",
    "Tallest mountain?": '["Mount Everest", "everest"]',
    "Who wrote Hamlet?": '["William Shakespeare", "Shakespeare"]',
}


def write(path, records, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "json":
        path.write_text(json.dumps(records, indent=2))
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def rows_of(out):
    return [r for split in ("train", "val") for r in pq.read_table(out / f"{split}.parquet").to_pylist()]


def rejects_of(out):
    with open(out / "rejects.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_alias_lists_in_every_file_format_become_rows_with_every_alias(tmp_path, fmt):
    qa_file = write(tmp_path / f"qa.{fmt}", ALIAS_RECORDS, fmt)
    result = run("--out", tmp_path / "out", "--suite", "qa", "--qa_file", qa_file, "--n_val", 1)
    assert result.returncode == 0, result.stderr
    rows = rows_of(tmp_path / "out")
    assert {r["prompt"][0]["content"]: r["reward_model"]["ground_truth"] for r in rows} == ALIAS_TRUTHS
    assert sorted(r["extra_info"]["id"] for r in rows) == ["q-1", "q-2", "q-3", "q-4"]
    assert {r["data_source"] for r in rows} == {"afm/qa"} and rejects_of(tmp_path / "out") == []
    unit = "lines" if fmt == "jsonl" else "records"
    assert f"{qa_file}: 4 {unit} = 3 train + 1 val + 0 unused" in result.stdout


def test_answer_as_text_number_or_list_and_the_old_lines_unchanged(tmp_path):
    qa_file = tmp_path / "qa.jsonl"
    qa_file.write_text(
        "\n".join(
            [
                '{"question": "Who wrote Hamlet?", "answer": "Shakespeare"}',
                '{"question": "Year of the moon landing?", "answer": 1969}',
                '{"question": "Largest planet?", "answer": ["Jupiter", "planet Jupiter"]}',
                # a single answer that reads as a JSON list is stored as a list of itself
                '{"question": "A list literal?", "answer": "[\\"a\\"]"}',
                # both fields: the alias list is the gold
                '{"question": "Red planet?", "answer": "Mars", "golden_answers": ["Mars", "the Red Planet"]}',
            ]
        )
    )
    result = run("--out", tmp_path / "out", "--suite", "qa", "--qa_file", qa_file, "--n_val", 1)
    assert result.returncode == 0, result.stderr
    rows = rows_of(tmp_path / "out")
    assert {r["prompt"][0]["content"]: r["reward_model"]["ground_truth"] for r in rows} == {
        "Who wrote Hamlet?": "Shakespeare",
        "Year of the moon landing?": "1969",
        "Largest planet?": '["Jupiter", "planet Jupiter"]',
        "A list literal?": '["[\\"a\\"]"]',
        "Red planet?": '["Mars", "the Red Planet"]',
    }
    assert sorted(r["extra_info"]["id"] for r in rows) == ["line 1", "line 2", "line 3", "line 4", "line 5"]


BAD_LINES = {  # line number: (the line, the reason its reject starts with)
    1: ('{"question": "Q1?", "golden_answers": ["a", "b", ""]}', "'golden_answers'[2] must be a non-empty string"),
    2: ('{"question": "Q2?", "golden_answers": ["a", null]}', "'golden_answers'[1] must be a non-empty string"),
    3: ('{"question": "Q3?", "golden_answers": []}', "'golden_answers' is an empty list"),
    4: ('{"question": "Q4?", "answer": {"text": "x"}}', "'answer' must be a string, a number or a list of strings"),
    5: ('{"question": "Q5?", "answer": [1, 2]}', "'answer'[0] must be a non-empty string"),
    6: ('{"question": "Q6 <|im_end|>?", "answer": "x"}', "'question' contains '<|im_end|>', a reserved chat token"),
    7: (
        '{"question": "Q7?", "golden_answers": ["ok", "<|endoftext|>"]}',
        "'golden_answers'[1] contains '<|endoftext|>'",
    ),
    8: ('{"question": "Q8?", "answer": true}', "'answer' must be a string, a number or a list of strings"),
    9: ('{"question": "Q9?"}', "missing or empty 'answer'"),
    10: ('{"golden_answers": ["x"]}', "missing or empty 'question'"),
}


def test_each_bad_record_is_a_reject_naming_its_field_and_the_counts_add_up(tmp_path):
    lines = [BAD_LINES[n][0] for n in range(1, 11)]
    lines += [
        '{"question": "Q1?", "golden_answers": ["fine"]}',  # 11: line 1 was rejected, so this one is new
        '{"question": "q1? ", "answer": "again"}',  # 12: a repeat of line 11
        "",  # 13
        '{"question": "Q14?", "answer": "fine"}',  # 14
    ]
    qa_file = tmp_path / "qa.jsonl"
    qa_file.write_text("\n".join(lines) + "\n")
    result = run("--out", tmp_path / "out", "--suite", "qa", "--qa_file", qa_file, "--n_val", 1)
    assert result.returncode == 0, result.stderr
    rejects = {r["line"]: r for r in rejects_of(tmp_path / "out")}
    expected = {n: reason for n, (_, reason) in BAD_LINES.items()} | {12: "duplicate of the question on line 11"}
    assert sorted(rejects) == sorted(expected)
    for number, reason in expected.items():
        assert rejects[number]["reason"].startswith(reason), rejects[number]
        assert rejects[number]["where"] == f"line {number}"
    assert rejects[6]["record"] == json.loads(BAD_LINES[6][0])  # the record itself, to fix it by
    assert (
        f"{qa_file}: 14 lines = 1 train + 1 val + 0 unused (over --n_train) + 11 rejected "
        f"(see {tmp_path / 'out' / 'rejects.jsonl'}) + 1 blank"
    ) in result.stdout


def test_a_json_array_names_its_rejects_by_index(tmp_path):
    records = [{"question": "Fine?", "golden_answers": ["yes"]}, ["not", "an", "object"], {"question": "Q?"}]
    qa_file = write(tmp_path / "qa.json", records, "json")
    result = run("--out", tmp_path / "out", "--suite", "qa", "--qa_file", qa_file)
    assert result.returncode == 0, result.stderr
    rejects = rejects_of(tmp_path / "out")
    assert [(r["where"], r["index"], r["reason"].split(" (")[0]) for r in rejects] == [
        ("index 1", 1, "not a JSON object"),
        ("index 2", 2, "missing or empty 'answer'"),
    ]


def _assert_one_error_line_and_no_parquet(result, out, *fragments):
    assert result.returncode == 1, result.stdout + result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not os.path.exists(out / "train.parquet") and not os.path.exists(out / "val.parquet")


def test_a_file_of_which_nothing_converts_is_an_error_with_one_line(tmp_path):
    qa_file = tmp_path / "qa.jsonl"
    qa_file.write_text("\n".join(BAD_LINES[n][0] for n in (1, 2, 9)) + "\n")  # the old code: 3 rejects, exit 0
    out = tmp_path / "out"
    result = run("--out", out, "--suite", "qa", "--qa_file", qa_file)
    _assert_one_error_line_and_no_parquet(
        result, out, "none of the 3 records", "1 missing or empty 'answer'", "'golden_answers'[2] must be"
    )
    assert len(rejects_of(out)) == 3  # what went wrong with each is still there to read


def test_an_empty_file_is_an_error(tmp_path):
    qa_file = tmp_path / "qa.jsonl"
    qa_file.write_text("\n\n")
    result = run("--out", tmp_path / "out", "--suite", "qa", "--qa_file", qa_file)
    _assert_one_error_line_and_no_parquet(result, tmp_path / "out", "no records in")


def test_a_search_r1_rl_parquet_given_as_a_qa_file_says_to_use_it_as_it_is(tmp_path):
    row = {
        "data_source": "nq",
        "prompt": [{"role": "user", "content": "Answer the given question. Question: who painted the mona lisa?\n"}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": ["Leonardo da Vinci"]}},
        "extra_info": {"split": "train", "index": 0},
    }
    qa_file = write(tmp_path / "train.parquet", [row], "parquet")
    result = run("--out", tmp_path / "out", "--suite", "qa", "--qa_file", qa_file)
    _assert_one_error_line_and_no_parquet(result, tmp_path / "out", "missing or empty 'question'")
    assert "GRPO recipe as it is" in rejects_of(tmp_path / "out")[0]["reason"]


def test_the_sample_file_converts_with_zero_rejects(tmp_path):
    result = run("--out", tmp_path / "out", "--suite", "qa", "--qa_file", SAMPLE, "--n_val", 2)
    assert result.returncode == 0, result.stderr
    with open(SAMPLE) as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert 5 <= len(records) <= 8 and all(set(r) == {"id", "question", "golden_answers"} for r in records)
    assert rejects_of(tmp_path / "out") == []
    rows = rows_of(tmp_path / "out")
    assert len(rows) == len(records)
    truths = {r["prompt"][0]["content"]: r["reward_model"]["ground_truth"] for r in rows}
    assert truths["who painted the mona lisa?"] == '["Leonardo da Vinci", "Leonardo", "da Vinci"]'
    assert truths["what is the chemical symbol for gold?"] == "Au"


def test_the_rejects_file_belongs_to_the_run_that_wrote_it(tmp_path):
    """rejects.jsonl is committed with the splits (its digest in split.report.json), and a
    later run into the same folder that rejects nothing leaves no stale one behind."""
    import hashlib

    qa_file = tmp_path / "qa.jsonl"
    lines = ['{"question": "Q1?", "answer": "a"}', '{"question": "Q2?", "answer": "b"}', "not json"]
    qa_file.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert run("--out", out, "--suite", "qa", "--qa_file", qa_file, "--n_val", 1).returncode == 0
    report = json.loads((out / "split.report.json").read_text())
    digest = hashlib.sha256((out / "rejects.jsonl").read_bytes()).hexdigest()
    assert report["files"]["rejects.jsonl"] == {"sha256": digest, "rows": 1}
    qa_file.write_text("\n".join(lines[:2]) + "\n")
    assert run("--out", out, "--suite", "qa", "--qa_file", qa_file, "--n_val", 1).returncode == 0
    assert rejects_of(out) == []  # this run's, empty
    result = run("--out", out, "--suite", "algorithmic", "--difficulties", "1", "--n_train", 4, "--n_val", 2)
    assert result.returncode == 0, result.stderr
    assert not (out / "rejects.jsonl").exists() and not list(out.glob("*.tmp"))
    assert sorted(json.loads((out / "split.report.json").read_text())["files"]) == ["train.parquet", "val.parquet"]
