"""data_preprocess/make_self_improve_data.py: seed 004's tracks A and B and its pairs,
with label balances reported and one train/validation split shared by all three."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from afm_trainer.data.self_improve import write_self_improve_data
from afm_trainer.traces.formats import teacher_prompt
from afm_trainer.world.qa_world import build_world
from afm_trainer.world.strategy_qa import make_strategy_questions, write_strategy_traces
from tests.conftest import REPO


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    path = tmp_path_factory.mktemp("si") / "traces.jsonl"
    questions = make_strategy_questions(build_world(0), seed=5, n=200)
    records = write_strategy_traces(str(path), questions, seed=5, teacher_error={"yes": 0.6, "no": 0.05})
    with open(path, "a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"id": "no-question", "answer": "yes"}) + "\n")
    return str(path), records


def rows(folder, split):
    return pq.read_table(f"{folder}/{split}.parquet").to_pylist()


def test_filtering_skews_the_labels_and_balancing_evens_them(tmp_path, traces):
    path, records = traces
    unbalanced = write_self_improve_data(path, str(tmp_path / "u"), min_score=1.0)
    balanced = write_self_improve_data(path, str(tmp_path / "b"), min_score=1.0, balance="upsample")
    kept = [r for r in records if r["score"] == 1.0]
    expected = {label: sum(r["answer"] == label for r in kept) for label in ("yes", "no")}
    labels = unbalanced["convert track_b"]["label_balance"]
    assert labels["before_filtering"] == {"yes": 100, "no": 100}
    assert labels["after_filtering"] == expected and expected["yes"] < 0.4 * len(kept)  # the teacher errs on yes
    after = balanced["convert track_b"]["label_balance"]["after_filtering"]
    assert after["yes"] == after["no"] == expected["no"]
    # track A keeps every record: its target is the recorded answer, whatever the teacher said
    assert unbalanced["convert track_a"]["label_balance"]["after_filtering"] == {"yes": 100, "no": 100}
    # the bad lines are rejected with their line numbers, in every track
    for track in ("track_a", "track_b"):
        with open(tmp_path / "u" / "work" / f"{track}.parquet.rejects.jsonl") as f:
            rejects = [json.loads(line) for line in f]
        assert {r["where"] for r in rejects if "dropped" not in r["reason"]} >= {"line 201", "line 202"}


def test_tracks_share_one_split_and_hold_what_seed_004_specifies(tmp_path, traces):
    path, records = traces
    write_self_improve_data(path, str(tmp_path / "d"), min_score=1.0, balance="upsample", val_ratio=0.2)
    by_id = {r["id"]: r for r in records}
    val_ids = {}
    for track, column in (("track_a", "trajectory_id"), ("track_b", "trajectory_id"), ("pairs", "pair_id")):
        train, val = rows(tmp_path / "d" / track, "train"), rows(tmp_path / "d" / track, "val")
        assert train and val
        val_ids[track] = {r[column].split("#copy")[0] for r in val}
        assert not val_ids[track] & {r[column].split("#copy")[0] for r in train}  # no question on both sides
    assert val_ids["track_b"] <= val_ids["track_a"] and val_ids["pairs"] <= val_ids["track_b"]

    a = rows(tmp_path / "d" / "track_a", "train")[0]
    record = by_id[a["trajectory_id"]]
    assert a["messages"][0]["content"] == record["question"] and "Student draft" not in a["messages"][0]["content"]
    assert a["messages"][1]["content"] == f"<answer>{record['answer']}</answer>"
    b = rows(tmp_path / "d" / "track_b", "train")[0]
    record = by_id[b["trajectory_id"].split("#copy")[0]]
    assert b["messages"][0]["content"] == teacher_prompt(record["question"], record["student_draft"])
    assert (
        b["messages"][1]["content"] == f"<think>{record['teacher_output']}</think><answer>{record['answer']}</answer>"
    )
    for pair in rows(tmp_path / "d" / "pairs", "train"):
        record = by_id[pair["pair_id"]]
        assert record["draft_answer"].lower() != record["answer"] and record["score"] == 1.0
        assert pair["rejected"][0]["content"] == record["student_draft"]
        assert pair["chosen"][0]["content"].startswith(f"<think>{record['teacher_output']}")


def test_cli_reports_counts(tmp_path, traces):
    path, _ = traces
    result = subprocess.run(
        [
            sys.executable,
            f"{REPO}/data_preprocess/make_self_improve_data.py",
            "--input_file",
            path,
            "--output_dir",
            str(tmp_path / "cli"),
            "--min_score",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "track_b: 202 records in" in result.stdout and "labels after filtering" in result.stdout


def test_a_missing_input_is_one_error_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            f"{REPO}/data_preprocess/make_self_improve_data.py",
            "--input_file",
            str(tmp_path / "none.jsonl"),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and result.stderr.strip() == f"error: input file not found: {tmp_path / 'none.jsonl'}"
