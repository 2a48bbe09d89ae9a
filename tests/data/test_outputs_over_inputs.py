"""No data_preprocess CLI writes over its own input: an output, a companion (rejects,
report, teacher_cot pairs) or a temporary that resolves to an input, by any spelling, is
refused with one error line and exit 2, before anything is written."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from afm_trainer.data.convert import convert
from tests.data.cli import one_error_line, run_cli, snapshot
from tests.data.test_convert_traces import CHAIN, SEARCH

COT = {"question": "Is 4 even?", "answer": "yes", "student_draft": "no", "teacher_output": "4 ends in 4."}


def jsonl(path, records) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def refused(tmp_path, capsys, cli: str, *argv) -> str:
    """Run a CLI that must refuse: exit 2, one error line, every file under tmp_path as it was."""
    before = snapshot(tmp_path)
    code, stderr = run_cli(cli, *argv, capsys=capsys)
    assert code == 2, stderr
    assert snapshot(tmp_path) == before  # nothing written, nothing removed
    return one_error_line(stderr)


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink", "other_spelling", "hard_link"])
def test_convert_refuses_an_output_file_that_is_the_input(tmp_path, capsys, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)
    source = jsonl(tmp_path / "in.jsonl", [SEARCH])
    (tmp_path / "sub").mkdir()
    output = {
        "same": "in.jsonl",
        "dot": "./in.jsonl",
        "symlink": "link.jsonl",
        "other_spelling": "sub/../in.jsonl",
        "hard_link": "hard.jsonl",
    }[spelling]
    if spelling == "symlink":
        os.symlink("in.jsonl", "link.jsonl")
    if spelling == "hard_link":
        os.link("in.jsonl", "hard.jsonl")
    line = refused(
        tmp_path,
        capsys,
        "convert_traces",
        "--format",
        "search_agent",
        "--input_file",
        "in.jsonl",
        "--output_file",
        output,
    )
    assert line == f"error: the output {output} would overwrite the input in.jsonl: give another output name"
    assert open(source).read() == json.dumps(SEARCH) + "\n"


def test_convert_refuses_a_companion_that_is_the_input(tmp_path, capsys):
    # The rejects file, the report and teacher_cot's pairs are written beside OUT.parquet.
    rejects = jsonl(tmp_path / "o.parquet.rejects.jsonl", [SEARCH])
    line = refused(
        tmp_path,
        capsys,
        "convert_traces",
        "--format",
        "search_agent",
        "--input_file",
        rejects,
        "--output_file",
        tmp_path / "o.parquet",
    )
    assert line == f"error: the output {rejects} would overwrite the input {rejects}: give another output name"

    report = tmp_path / "r.parquet.report.json"
    report.write_text(json.dumps([SEARCH]))  # a JSON array is an input too
    line = refused(
        tmp_path,
        capsys,
        "convert_traces",
        "--format",
        "auto",
        "--input_file",
        report,
        "--output_file",
        tmp_path / "r.parquet",
    )
    assert "would overwrite the input" in line and str(report) in line

    pairs = tmp_path / "t.pairs.parquet"
    pq.write_table(pa.Table.from_pylist([COT]), pairs)
    line = refused(
        tmp_path,
        capsys,
        "convert_traces",
        "--format",
        "teacher_cot",
        "--input_file",
        pairs,
        "--output_file",
        tmp_path / "t.parquet",
    )
    assert line == f"error: the output {pairs} would overwrite the input {pairs}: give another output name"


def test_a_glob_input_that_would_match_an_output_is_refused(tmp_path, capsys):
    jsonl(tmp_path / "a.jsonl", [SEARCH])
    code, _ = run_cli(
        "convert_traces",
        "--format",
        "search_agent",
        "--input_file",
        tmp_path / "*.jsonl",
        "--output_file",
        tmp_path / "a.parquet",
        capsys=capsys,
    )
    assert code == 0
    # The first run's rejects file now matches the glob: a second run would read and replace it.
    line = refused(
        tmp_path,
        capsys,
        "convert_traces",
        "--format",
        "search_agent",
        "--input_file",
        tmp_path / "*.jsonl",
        "--output_file",
        tmp_path / "a.parquet",
    )
    assert f"the output {tmp_path / 'a.parquet.rejects.jsonl'} would overwrite the input" in line


def test_every_cli_refuses_to_write_over_its_input(tmp_path, capsys):
    pairs = jsonl(tmp_path / "pairs.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}])
    assert "overwrite the input" in refused(
        tmp_path, capsys, "make_pairs", "--input_file", pairs, "--output_file", pairs
    )

    split_dir = tmp_path / "split"
    convert(
        jsonl(tmp_path / "t.jsonl", [{**SEARCH, "id": f"t{i}"} for i in range(4)]),
        str(split_dir / "train.parquet"),
        "search_agent",
    )
    os.remove(split_dir / "train.parquet.report.json")
    line = refused(
        tmp_path, capsys, "prepare_train_val", "--input_file", split_dir / "train.parquet", "--output_dir", split_dir
    )
    assert line.startswith(f"error: the output {split_dir / 'train.parquet'} would overwrite the input")
    # An earlier run's shard (which this run would remove) is an input too.
    os.rename(split_dir / "train.parquet", split_dir / "train-00000-of-00002.parquet")
    line = refused(
        tmp_path,
        capsys,
        "prepare_train_val",
        "--input_file",
        split_dir / "train-00000-of-00002.parquet",
        "--output_dir",
        split_dir,
    )
    assert "train-00000-of-00002.parquet would overwrite the input" in line

    rl = tmp_path / "rl"
    qa = jsonl(rl / "rejects.jsonl", [{"question": "Who wrote Hamlet?", "answer": "Shakespeare"}])
    line = refused(tmp_path, capsys, "make_rl_data", "--suite", "qa", "--qa_file", qa, "--out", rl)
    assert line == f"error: the output {qa} would overwrite the input {qa}: give another output name"

    steps = str(tmp_path / "steps.parquet")
    convert(jsonl(tmp_path / "s.jsonl", [SEARCH]), steps, "search_agent", mode="stepwise")
    for name in ("rejects.jsonl", "report.json"):
        os.remove(f"{steps}.{name}")
    assert "overwrite the input" in refused(
        tmp_path, capsys, "add_summaries", "--input_file", steps, "--output_file", steps
    )
    assert "overwrite the input" in refused(
        tmp_path,
        capsys,
        "split_summary_datasets",
        "--input_file",
        steps,
        "--summary_prefix_file",
        tmp_path / "p.parquet",
        "--summary_only_file",
        steps,
    )
    assert "overwrite the input" in refused(
        tmp_path, capsys, "add_teacher_topk", "--input_file", steps, "--output_file", steps, "--teacher", tmp_path
    )
    chains = jsonl(tmp_path / "chains.jsonl", [CHAIN])
    assert "overwrite the input" in refused(
        tmp_path, capsys, "augment_chains", "--input_file", chains, "--output_file", chains
    )

    # The folder CLIs: an input inside a folder the run fills would be replaced by a step.
    afm = tmp_path / "afm"
    (afm / "work").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([CHAIN]), afm / "work" / "afm.parquet")  # what its first step writes
    line = refused(tmp_path, capsys, "make_afm_data", "--input_file", afm / "work" / "afm.parquet", "--output_dir", afm)
    assert line.startswith(f"error: the input {afm / 'work' / 'afm.parquet'} is inside {afm / 'work'}")
    cot = tmp_path / "cot"
    track_a = jsonl(cot / "work" / "track_a.jsonl", [COT])  # its first step rewrites this file from the input
    line = refused(tmp_path, capsys, "make_self_improve_data", "--input_file", track_a, "--output_dir", cot)
    assert line.startswith(f"error: the input {track_a} is inside {cot / 'work'}")
    out = tmp_path / "pipe"
    traces = jsonl(out / "multiturn" / "traces.jsonl", [SEARCH])
    line = refused(tmp_path, capsys, "run_pipeline", traces, out)
    assert line.startswith(f"error: the input {traces} is inside {out / 'multiturn'}")
