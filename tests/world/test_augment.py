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


def read_new(path, n_sources):
    with open(path) as f:
        return [json.loads(line) for line in f][n_sources:]


def test_the_held_out_prompts_augmentation_would_make_are_never_made(tmp_path, sources):
    """The held-out set is exactly what augmentation makes without it, so ignoring the
    exclusion would show at once."""
    chains = write_jsonl(tmp_path / "c.jsonl", sources[:4])
    free = augment_chains(chains, str(tmp_path / "free.jsonl"), copies=2)
    would_make = {r["task"] for r in read_new(tmp_path / "free.jsonl", 4)}
    assert free["generated"] == 8 and len(would_make) == 8
    exclude = write_jsonl(tmp_path / "heldout.jsonl", [{"prompt": p} for p in sorted(would_make)])
    report = augment_chains(chains, str(tmp_path / "o.jsonl"), copies=2, exclude=exclude)
    new = read_new(tmp_path / "o.jsonl", 4)
    assert {r["task"] for r in new}.isdisjoint(would_make)
    assert len(new) == report["generated"] == 8  # other inputs instead, none short
    assert report["excluded_prompts"] == 8 and report["copies_without_a_new_input"] == 0


def test_a_cell_the_held_out_set_exhausts_gets_only_what_is_left(tmp_path):
    """FizzBuzz at difficulty 1 has 15 prompts, "FizzBuzz of 1?" .. "FizzBuzz of 15?"."""
    source = agent_chain_record(make_task(3, "fizzbuzz", 1, 0), random.Random(0))
    assert source["task"] == "FizzBuzz of 6?"
    chains = write_jsonl(tmp_path / "c.jsonl", [source])
    every = [f"FizzBuzz of {n}?" for n in range(1, 16)]
    exclude = write_jsonl(tmp_path / "all.jsonl", [{"prompt": p} for p in every])
    report = augment_chains(chains, str(tmp_path / "o.jsonl"), copies=3, exclude=exclude)
    assert read_new(tmp_path / "o.jsonl", 1) == []
    assert (report["generated"], report["copies_without_a_new_input"], report["excluded_prompts"]) == (0, 3, 15)
    # all but "FizzBuzz of 7?" held out (6, the source's own, among them): 7 is the one new input
    exclude = write_jsonl(tmp_path / "but7.jsonl", [{"prompt": p} for p in every if p != "FizzBuzz of 7?"])
    report = augment_chains(chains, str(tmp_path / "o7.jsonl"), copies=3, exclude=exclude)
    assert [(r["task"], r["x"], r["answer"]) for r in read_new(tmp_path / "o7.jsonl", 1)] == [
        ("FizzBuzz of 7?", 7, "7")
    ]
    assert (report["generated"], report["copies_without_a_new_input"], report["excluded_prompts"]) == (1, 2, 14)


def test_a_record_nested_too_deep_to_copy_is_one_reject_and_the_rest_is_augmented(tmp_path, sources):
    path = tmp_path / "c.jsonl"
    write_jsonl(path, sources[:1])
    with open(path, "a") as f:
        f.write('{"task": "x", "trajectory": ' + "[" * 1000 + "]" * 1000 + "}\n")
    out = str(tmp_path / "more.jsonl")
    report = augment_chains(str(path), out, copies=1)
    assert report["records_in"] == 2 and report["generated"] == 1 and report["not_augmented"] == 1
    with open(out) as f:
        assert json.loads(f.readline()) == sources[0]
    with open(out + ".not_augmented.jsonl") as f:
        (reject,) = [json.loads(line) for line in f]
    assert reject["where"] == "line 2" and reject["record"] is None
    assert reject["reason"].startswith("nested too deep")
