"""A run's files are one set: an earlier run's set is replaced whole (stale shards and
companions removed), the report is written last and names each file's sha256 and rows,
a run interrupted while renaming leaves no report that looks complete, and a full disk
is one error line with no partial or temporary file and the earlier set untouched."""

import errno
import hashlib
import json
import os

import pyarrow.parquet as pq
import pytest

from afm_trainer.data.convert import convert
from afm_trainer.data.splits import prepare_train_val
from tests.data.cli import one_error_line, run_cli, snapshot
from tests.data.test_convert_traces import SEARCH

COT = {"question": "Is 4 even?", "answer": "yes", "student_draft": "It is odd.", "teacher_output": "4 ends in 4."}


def jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def searches(n: int, prefix: str = "t") -> list[dict]:
    return [{**SEARCH, "id": f"{prefix}{i}"} for i in range(n)]


def complete(report_path) -> bool:
    """Whether a report is there and every file it names is there with its digest and rows."""
    if not os.path.exists(report_path):
        return False
    folder = os.path.dirname(report_path)
    for name, described in json.load(open(report_path))["files"].items():
        path = os.path.join(folder, name)
        if not os.path.exists(path) or hashlib.sha256(open(path, "rb").read()).hexdigest() != described["sha256"]:
            return False
        rows = pq.read_metadata(path).num_rows if name.endswith(".parquet") else len(open(path).readlines())
        if rows != described["rows"]:
            return False
    return True


def test_the_report_names_every_file_of_the_set_with_its_digest_and_rows(tmp_path):
    src = jsonl(tmp_path / "in.jsonl", [*searches(3), {"id": "bad"}])
    out = tmp_path / "o.parquet"
    convert(src, str(out), "search_agent")
    report = json.load(open(f"{out}.report.json"))
    assert sorted(report["files"]) == ["o.parquet", "o.parquet.rejects.jsonl"]
    assert report["files"]["o.parquet"]["rows"] == 3 and report["files"]["o.parquet.rejects.jsonl"]["rows"] == 1
    assert report["files"]["o.parquet"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert complete(f"{out}.report.json")
    out.write_bytes(out.read_bytes()[:-1] + b"X")  # a file the report does not describe is detectable
    assert not complete(f"{out}.report.json")


def test_a_new_split_replaces_every_shard_of_the_earlier_one(tmp_path):
    src = jsonl(tmp_path / "in.jsonl", searches(12))
    convert(src, str(tmp_path / "c.parquet"), "search_agent")
    out = tmp_path / "split"
    prepare_train_val(str(tmp_path / "c.parquet"), str(out), 0.25, 42, shards=4)
    assert sorted(os.listdir(out)) == [
        "split.report.json",
        *(f"train-0000{k}-of-00004.parquet" for k in range(4)),
        *(f"val-0000{k}-of-00003.parquet" for k in range(3)),  # 3 validation rows: at most one shard per row
    ]
    prepare_train_val(str(tmp_path / "c.parquet"), str(out), 0.25, 7, shards=2)  # another seed, other shards
    assert sorted(os.listdir(out)) == [
        "split.report.json",
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
        "val-00000-of-00002.parquet",
        "val-00001-of-00002.parquet",
    ]
    report = json.load(open(out / "split.report.json"))
    assert sorted(report["files"]) == sorted(n for n in os.listdir(out) if n.endswith(".parquet"))
    assert complete(out / "split.report.json")
    ids = {
        side: {
            t
            for n in os.listdir(out)
            if n.startswith(side)
            for t in pq.read_table(out / n)["trajectory_id"].to_pylist()
        }
        for side in ("train", "val")
    }
    assert len(ids["train"]) == 9 and len(ids["val"]) == 3 and not ids["train"] & ids["val"]
    prepare_train_val(str(tmp_path / "c.parquet"), str(out), 0.25, 7, shards=1)
    assert sorted(os.listdir(out)) == ["split.report.json", "train.parquet", "val.parquet"]


def test_a_companion_of_an_earlier_run_is_removed_and_one_of_unknown_origin_refused(tmp_path, capsys):
    out = tmp_path / "o.parquet"
    convert(jsonl(tmp_path / "cot.jsonl", [COT]), str(out), "teacher_cot")
    assert os.path.exists(tmp_path / "o.pairs.parquet")
    convert(jsonl(tmp_path / "s.jsonl", searches(2)), str(out), "search_agent")
    assert sorted(os.listdir(tmp_path)) == [
        "cot.jsonl",
        "o.parquet",
        "o.parquet.rejects.jsonl",
        "o.parquet.report.json",
        "s.jsonl",
    ]
    # A pairs file the earlier report does not name may be the user's: the run is refused.
    (tmp_path / "o.pairs.parquet").write_bytes(b"mine")
    before = snapshot(tmp_path)
    code, stderr = run_cli(
        "convert_traces",
        "--format",
        "search_agent",
        "--input_file",
        tmp_path / "s.jsonl",
        "--output_file",
        out,
        capsys=capsys,
    )
    assert code == 2 and snapshot(tmp_path) == before
    assert one_error_line(stderr) == (
        f"error: {tmp_path / 'o.pairs.parquet'} is there from an earlier run or someone else, and this run would "
        "not write it: remove it, or give another output name"
    )


class Killed(BaseException):
    """What a kill between two renames looks like to the code (it never runs again)."""


def kill_after_renames(monkeypatch, allowed: int) -> list[str]:
    done = []
    replace = os.replace

    def dying_replace(source, target):
        if len(done) == allowed:
            raise Killed()
        replace(source, target)
        done.append(str(target))

    monkeypatch.setattr(os, "replace", dying_replace)
    return done


@pytest.mark.parametrize("allowed", [0, 1, 2])
def test_a_conversion_killed_between_renames_leaves_no_set_that_looks_complete(tmp_path, monkeypatch, allowed):
    out = tmp_path / "o.parquet"
    convert(jsonl(tmp_path / "a.jsonl", [COT, {**COT, "student_draft": "Odd."}]), str(out), "teacher_cot")
    old = snapshot(tmp_path)
    done = kill_after_renames(monkeypatch, allowed)
    with pytest.raises(Killed):
        convert(
            jsonl(tmp_path / "b.jsonl", [{**COT, "question": "Is 6 even?"}, {"question": 6}]), str(out), "teacher_cot"
        )
    monkeypatch.undo()
    assert len(done) == allowed
    assert not os.path.exists(f"{out}.report.json")  # removed before the first new file took an old one's place
    assert not complete(f"{out}.report.json")
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    renamed = {os.path.basename(p) for p in done}
    for name in ("o.parquet", "o.pairs.parquet", "o.parquet.rejects.jsonl"):  # the rest is the old run's
        assert (snapshot(tmp_path)[name] == old[name]) == (name not in renamed)


def test_a_split_killed_between_renames_leaves_no_report(tmp_path, monkeypatch):
    convert(jsonl(tmp_path / "in.jsonl", searches(12)), str(tmp_path / "c.parquet"), "search_agent")
    out = tmp_path / "split"
    prepare_train_val(str(tmp_path / "c.parquet"), str(out), 0.25, 42, shards=4)
    kill_after_renames(monkeypatch, 1)
    with pytest.raises(Killed):
        prepare_train_val(str(tmp_path / "c.parquet"), str(out), 0.25, 7, shards=2)
    monkeypatch.undo()
    # The old shards are gone before any new one is in place: no mix of the two runs, and no report.
    assert sorted(os.listdir(out)) == ["train-00000-of-00002.parquet"]


@pytest.mark.parametrize("failing", ["parquet", "report"])
def test_a_full_disk_is_one_error_line_and_the_earlier_set_is_untouched(tmp_path, monkeypatch, capsys, failing):
    src = jsonl(tmp_path / "in.jsonl", searches(3))
    out = tmp_path / "o.parquet"
    assert run_cli("convert_traces", "--format", "search_agent", "--input_file", src, "--output_file", out)[0] == 0
    before = snapshot(tmp_path)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if failing == "parquet":
        monkeypatch.setattr(pq.ParquetWriter, "write_table", disk_full)
    else:
        monkeypatch.setattr(json, "dump", disk_full)
    jsonl(tmp_path / "in.jsonl", searches(5))
    before["in.jsonl"] = snapshot(tmp_path)["in.jsonl"]
    code, stderr = run_cli(
        "convert_traces", "--format", "search_agent", "--input_file", src, "--output_file", out, capsys=capsys
    )
    named = {"parquet": out, "report": f"{out}.report.json"}[failing]
    assert code == 1 and one_error_line(stderr) == f"error: cannot write {named}: No space left on device"
    assert snapshot(tmp_path) == before  # no partial file, no temporary, the earlier run's set as it was


def test_a_full_disk_while_splitting_or_pairing_is_one_error_line(tmp_path, monkeypatch, capsys):
    convert(jsonl(tmp_path / "in.jsonl", searches(4)), str(tmp_path / "c.parquet"), "search_agent")
    jsonl(tmp_path / "p.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}])
    before = snapshot(tmp_path)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pq.ParquetWriter, "write_table", disk_full)
    code, stderr = run_cli(
        "prepare_train_val", "--input_file", tmp_path / "c.parquet", "--output_dir", tmp_path / "split", capsys=capsys
    )
    first = tmp_path / "split" / "train.parquet"
    assert code == 1 and one_error_line(stderr) == f"error: cannot write {first}: No space left on device"
    assert os.listdir(tmp_path / "split") == []
    code, stderr = run_cli(
        "make_pairs", "--input_file", tmp_path / "p.jsonl", "--output_file", tmp_path / "p.parquet", capsys=capsys
    )
    out = tmp_path / "p.parquet"
    assert code == 1 and one_error_line(stderr) == f"error: cannot write {out}: No space left on device"
    assert snapshot(tmp_path) == before


def test_a_full_disk_while_summarising_is_one_error_line_and_leaves_no_temporary(tmp_path, monkeypatch, capsys):
    convert(jsonl(tmp_path / "in.jsonl", searches(3)), str(tmp_path / "c.parquet"), "search_agent", mode="stepwise")
    before = snapshot(tmp_path)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pq.ParquetWriter, "write_table", disk_full)
    out = tmp_path / "s.parquet"
    code, stderr = run_cli("add_summaries", "--input_file", tmp_path / "c.parquet", "--output_file", out, capsys=capsys)
    assert code == 1 and one_error_line(stderr) == f"error: cannot write {out}: No space left on device"
    assert snapshot(tmp_path) == before
