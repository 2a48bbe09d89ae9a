"""Augmented agent chains: new inputs of each task, solved by the teacher, traceable to their source."""

import json
import random
import subprocess
import sys

import pandas as pd
import pytest

from afm_trainer.data.agent_chains import write_chain_data
from afm_trainer.world.algorithmic import PROBLEM_TYPES, generate_suite, make_task
from afm_trainer.world.augment import augment_chains
from afm_trainer.world.teacher import agent_chain_record
from tests.conftest import REPO
from tests.data.test_convert_traces import write_jsonl


@pytest.fixture(scope="module")
def sources():
    """Four chains of the world (one with a rewrite), and one that names no task type."""
    rng = random.Random(0)
    tasks = generate_suite(42, 1, types=["rpn", "fizzbuzz"], difficulties=[2, 5])
    chains = [agent_chain_record(t, rng, retry=1.0 if i == 0 else 0.0) for i, t in enumerate(tasks)]
    assert sum(s["agent"] == "Coder" for s in chains[0]["trajectory"]) == 2
    untyped = {k: v for k, v in chains[1].items() if k != "type"} | {"id": "untyped"}
    return chains + [untyped]


def test_new_chains_are_other_inputs_of_the_same_task_each_traceable_to_its_source(tmp_path, sources):
    held_out = make_task(7, "rpn", 2, 0)  # any prompt will do as an exclusion
    exclude = write_jsonl(tmp_path / "heldout.jsonl", [{"prompt": held_out.prompt}])
    out = str(tmp_path / "more.jsonl")
    report = augment_chains(write_jsonl(tmp_path / "c.jsonl", sources), out, copies=2, exclude=exclude)
    with open(out) as f:
        records = [json.loads(line) for line in f]
    assert records[: len(sources)] == sources  # every input record, unchanged, first
    new = records[len(sources) :]
    assert report["generated"] == len(new) == 8 and report["not_augmented"] == 1
    by_id = {s["id"]: s for s in sources}
    for record in new:
        source = by_id[record["augmented_from"]]
        assert record["id"] in (f"{source['id']}#aug1", f"{source['id']}#aug2")
        assert record["augmentation"] == "perturbed_parameters"
        assert (record["type"], record["difficulty"]) == (source["type"], source["difficulty"])
        assert record["task"] not in (source["task"], held_out.prompt)
        problem = PROBLEM_TYPES[record["type"]]  # the teacher's answer is right for the new input
        assert record["score"] == 1.0 and record["answer"] == problem.show(problem.solve(record["x"]))
    coders = {r["id"]: sum(s["agent"] == "Coder" for s in r["trajectory"]) for r in new}
    assert {coders[f"{sources[0]['id']}#aug{k}"] for k in (1, 2)} == {2}  # the rewrite is kept
    assert coders[f"{sources[1]['id']}#aug1"] == 1
    with open(out + ".not_augmented.jsonl") as f:
        (skipped,) = map(json.loads, f)
    assert skipped["where"] == "line 5" and "task type None" in skipped["reason"]
    again = tmp_path / "again.jsonl"
    augment_chains(write_jsonl(tmp_path / "c.jsonl", sources), str(again), copies=2, exclude=exclude)
    assert again.read_text() == (tmp_path / "more.jsonl").read_text()  # the same records on every run


def test_an_augmented_chain_stays_on_its_sources_side_of_the_split(tmp_path, sources):
    out = str(tmp_path / "more.jsonl")
    augment_chains(write_jsonl(tmp_path / "c.jsonl", sources[:4]), out, copies=3)
    write_chain_data(out, str(tmp_path / "data"), val_ratio=0.5, seed=3)
    for name in ("afm", "coder"):
        sides = {}
        for split in ("train", "val"):
            for trajectory_id in pd.read_parquet(tmp_path / "data" / name / f"{split}.parquet")["trajectory_id"]:
                sides.setdefault(trajectory_id.split("#aug")[0], set()).add(split)
        assert len(sides) == 4 and all(len(s) == 1 for s in sides.values()), sides
        assert {next(iter(s)) for s in sides.values()} == {"train", "val"}


def test_cli_reports_counts_and_a_missing_input_is_one_line(tmp_path, sources):
    cli = [sys.executable, f"{REPO}/data_preprocess/augment_chains.py"]
    ok = subprocess.run(
        cli
        + [
            "--input_file",
            write_jsonl(tmp_path / "c.jsonl", sources[1:2] + ["{oops"]),
            "--output_file",
            str(tmp_path / "o.jsonl"),
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "2 records in, 1 generated; 1 not augmented" in ok.stdout
    missing = subprocess.run(
        cli + ["--input_file", "/no/c.jsonl", "--output_file", str(tmp_path / "x.jsonl")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and missing.stderr == "error: input file not found: /no/c.jsonl\n"


def test_a_broken_exclude_file_is_one_error_naming_its_line(tmp_path, sources):
    from afm_trainer.data.parquet_io import InputError

    exclude = write_jsonl(tmp_path / "heldout.jsonl", [{"prompt": "a"}, {"question": "b"}])
    with pytest.raises(InputError, match=r"heldout.jsonl, line 2: not a task with a 'prompt'"):
        augment_chains(write_jsonl(tmp_path / "c.jsonl", sources[:1]), str(tmp_path / "o.jsonl"), exclude=exclude)
    assert not (tmp_path / "o.jsonl").exists()
