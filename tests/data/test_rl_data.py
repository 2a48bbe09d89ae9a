"""data_preprocess/make_rl_data.py: verl's RL columns, disjoint splits, user files accounted for."""

import json
import os
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from afm_trainer.world.algorithmic import generate_suite, solution_source
from afm_trainer.world.qa_world import build_world, make_questions, questions_to_jsonl, save_world
from tests.conftest import REPO
from tests.suites.test_rewards import rewards  # loaded by its path, as verl loads it

SCRIPT = os.path.join(REPO, "data_preprocess", "make_rl_data.py")


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=120)


def read(path):
    return pq.read_table(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A demo folder as make_world writes it (held-out sets, corpus, manifest), with the
    search agent's traces reduced to their questions and answers."""
    out = tmp_path_factory.mktemp("demo")
    for folder in ("heldout", "traces"):
        os.makedirs(out / folder)
    qa_world = build_world(0)
    save_world(qa_world, str(out / "corpus.jsonl"))
    heldout = make_questions(qa_world, 999, 40)
    questions_to_jsonl(heldout, str(out / "heldout" / "qa.jsonl"))
    traced = make_questions(qa_world, 42, 600, exclude={q.question for q in heldout})
    with open(out / "traces" / "search_agent.jsonl", "w") as f:
        f.writelines(json.dumps({"question": q.question, "answer": q.answer, "hops": q.hops}) + "\n" for q in traced)
    with open(out / "heldout" / "algorithmic.jsonl", "w") as f:
        for t in generate_suite(999, 2):
            f.write(
                json.dumps(
                    {
                        "id": t.task_id,
                        "prompt": t.prompt,
                        "answer": t.answer,
                        "type": t.type,
                        "difficulty": t.difficulty,
                        "x": t.x,
                    }
                )
                + "\n"
            )
    (out / "manifest.json").write_text(json.dumps({"seed": 42, "heldout_seed": 999, "world_seed": 0}))
    return out


@pytest.fixture(scope="module")
def all_suites(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl")
    result = run("--out", out, "--suite", "all", "--n_train", 40, "--n_val", 15)
    assert result.returncode == 0, result.stderr
    return out


def test_columns_and_types_are_verls_rl_format(all_suites):
    for split in ("train", "val"):
        table = read(all_suites / f"{split}.parquet")
        assert table.column_names == ["data_source", "prompt", "ability", "reward_model", "extra_info", "agent_name"]
        assert table.schema.field("prompt").type == pa.list_(
            pa.struct([("role", pa.string()), ("content", pa.string())])
        )
        assert table.schema.field("reward_model").type == pa.struct(
            [("style", pa.string()), ("ground_truth", pa.string())]
        )
        assert table.schema.field("extra_info").type.field("index").type == pa.int64()
        rows = table.to_pylist()
        assert {r["data_source"] for r in rows} == {"afm/qa", "afm/algorithmic", "afm/code"}
        assert [r["extra_info"]["index"] for r in rows] == list(range(len(rows)))
        for r in rows:
            assert r["extra_info"]["split"] == split
            assert len(r["prompt"]) == 1 and r["prompt"][0]["role"] == "user" and r["prompt"][0]["content"]
            assert r["reward_model"]["style"] == "rule" and isinstance(r["reward_model"]["ground_truth"], str)
            # verl's agent loops: the qa rows need the search tool, the others answer in one turn.
            assert r["agent_name"] == ("afm_tag_agent" if r["data_source"] == "afm/qa" else "single_turn_agent")


def test_counts_per_suite_are_the_ones_asked_for(all_suites):
    for split, n in (("train", 40), ("val", 15)):
        sources = [r["data_source"] for r in read(all_suites / f"{split}.parquet").to_pylist()]
        assert {s: sources.count(s) for s in set(sources)} == {"afm/qa": n, "afm/algorithmic": n, "afm/code": n}


def test_training_rows_take_the_kinds_in_turn(all_suites):
    """Unshuffled, a step's batch covers the task kinds evenly, not a run of one kind."""
    rows = read(all_suites / "train.parquet").to_pylist()
    kinds = [(r["data_source"], r["extra_info"]["type"]) for r in rows]
    n_kinds = len(set(kinds))
    assert n_kinds > 10
    window = kinds[:n_kinds]
    assert len(set(window)) == n_kinds  # the first rows: one of each kind
    assert [r["extra_info"]["index"] for r in rows] == list(range(len(rows)))


def test_hf_datasets_reads_it_as_verl_does(all_suites):
    import datasets

    row = datasets.load_dataset("parquet", data_files=str(all_suites / "train.parquet"))["train"][0]
    assert isinstance(row["extra_info"], dict) and isinstance(row["prompt"], list)


def test_train_and_val_share_no_prompt(all_suites):
    prompts = {
        s: {r["prompt"][0]["content"] for r in read(all_suites / f"{s}.parquet").to_pylist()} for s in ("train", "val")
    }
    assert prompts["train"] and prompts["val"] and not prompts["train"] & prompts["val"]


def test_every_val_row_is_scored_right_by_its_reference(all_suites):
    # The data and the reward agree: x and tests survive parquet, and the reference answer
    # (the reference solution for code) is scored correct.
    for r in read(all_suites / "val.parquet").to_pylist():
        truth = r["reward_model"]["ground_truth"]
        answer = solution_source(r["extra_info"]["type"]) if r["data_source"] == "afm/code" else truth
        result = rewards.compute_score(r["data_source"], f"<answer>{answer}</answer>", truth, r["extra_info"])
        assert result["correct"] == 1, r


def test_code_prompts_show_an_example_and_hide_the_tests(all_suites):
    for r in read(all_suites / "train.parquet").to_pylist():
        if r["data_source"] == "afm/code":
            assert "solve(x)" in r["prompt"][0]["content"] and "Example: solve(" in r["prompt"][0]["content"]
            assert len(json.loads(r["extra_info"]["tests"])) >= 2


def test_with_a_world_val_is_its_held_out_set_and_train_avoids_it(world, tmp_path):
    result = run("--out", tmp_path, "--world", world, "--n_train", 300, "--n_val", 250)
    assert result.returncode == 0, result.stderr
    heldout = {json.loads(line)["prompt"] for line in open(world / "heldout" / "algorithmic.jsonl")}
    heldout |= {json.loads(line)["question"] for line in open(world / "heldout" / "qa.jsonl")}
    val = [r for r in read(tmp_path / "val.parquet").to_pylist() if r["data_source"] != "afm/code"]
    val_prompts = {r["prompt"][0]["content"] for r in val}
    assert heldout <= val_prompts  # n_val above its size: all of it
    # qa tops up to n_val with questions no training trace asks; algorithmic has no more.
    traced = {json.loads(line)["question"] for line in open(world / "traces" / "search_agent.jsonl")}
    more = val_prompts - heldout
    assert len([r for r in val if r["data_source"] == "afm/qa"]) == 250 and len(more) == 250 - 40
    assert not more & traced
    train = read(tmp_path / "train.parquet").to_pylist()
    assert not {r["prompt"][0]["content"] for r in train} & val_prompts


def test_code_prompts_never_show_a_held_out_task(world, tmp_path):
    # A code prompt shows its example's answer. Small cells (fibonacci at difficulty 1 has
    # 6 inputs) make seed 42 draw held-out inputs unless they are excluded.
    result = run("--out", tmp_path, "--world", world, "--suite", "code", "--n_train", 1100, "--n_val", 20)
    assert result.returncode == 0, result.stderr
    heldout_inputs = {(t.type, json.dumps(t.x)) for t in generate_suite(999, 2)}
    train = read(tmp_path / "train.parquet").to_pylist()
    examples = {
        (r["extra_info"]["type"], re.search(r"Example: solve\((.*)\) returns", r["prompt"][0]["content"]).group(1))
        for r in train
    }
    assert len(examples) > 500 and not examples & heldout_inputs


def test_difficulties_pick_tasks_and_hop_counts(world, tmp_path):
    result = run("--out", tmp_path, "--world", world, "--difficulties", "1,2", "--n_train", 50, "--n_val", 50)
    assert result.returncode == 0, result.stderr
    for r in read(tmp_path / "train.parquet").to_pylist() + read(tmp_path / "val.parquet").to_pylist():
        assert r["extra_info"]["difficulty"] in (1, 2)


def test_a_world_whose_corpus_is_another_is_refused(world, tmp_path):
    other = tmp_path / "other"
    os.makedirs(other / "heldout")
    for name in ("heldout/qa.jsonl", "heldout/algorithmic.jsonl"):
        (other / name).write_text((world / name).read_text())
    save_world(build_world(5), str(other / "corpus.jsonl"))
    (other / "manifest.json").write_text(json.dumps({"world_seed": 0}))
    result = run("--out", tmp_path / "out", "--suite", "qa", "--world", other)
    assert result.returncode == 1 and "corpus.jsonl is not the world of seed 0" in result.stderr


QA_LINES = [
    '{"question": "Who wrote Hamlet?", "answer": "Shakespeare"}',  # 1
    '{"question": "Capital of France?", "answer": "Paris"',  # 2 broken JSON
    '{"question": "Year of the moon landing?", "answer": 1969}',  # 3 a number is a fine answer
    "",  # 4 blank
    '{"question": "Missing answer?"}',  # 5
    '["question", "answer"]',  # 6 not an object
    '{"question": "who wrote hamlet? ", "answer": "Shakespeare"}',  # 7 duplicate of line 1
    '{"question": "Largest planet?", "answer": "Jupiter"}',  # 8
    '{"question": "Boiling point of water in C?", "answer": "100"}',  # 9
    '{"question": "   ", "answer": "x"}',  # 10 empty question
    '{"question": "Smallest prime?", "answer": "2"}',  # 11
]
LATIN1_LINE = '{"question": "Where is the ETH?", "answer": "Zürich"}'.encode("latin-1")  # 12 not UTF-8
QA_REJECTED = {
    2: "not valid JSON",
    5: "missing or empty 'answer'",
    6: "not a JSON object",
    7: "duplicate of the question on line 1",
    10: "missing or empty 'question'",
    12: "not UTF-8 text",
    13: "not UTF-8 text",
}


def test_qa_file_lines_become_rows_or_rejects_and_the_counts_add_up(tmp_path):
    qa_file = tmp_path / "user.jsonl"
    qa_file.write_bytes(
        ("\n".join(QA_LINES) + "\n").encode() + LATIN1_LINE + b"\n\xff\xfe{not json"
    )  # 13: garbage, no final newline
    result = run("--out", tmp_path / "out", "--suite", "qa", "--qa_file", qa_file, "--n_val", 2, "--n_train", 3)
    assert result.returncode == 0, result.stderr
    rejects = [json.loads(line) for line in open(tmp_path / "out" / "rejects.jsonl")]
    assert sorted(r["line"] for r in rejects) == sorted(QA_REJECTED)
    for r in rejects:
        assert r["reason"].startswith(QA_REJECTED[r["line"]]), r
    counts = re.search(
        r"(\d+) lines = (\d+) train \+ (\d+) val \+ (\d+) unused .* \+ (\d+) rejected .* \+ (\d+) blank", result.stdout
    )
    lines, train, val, unused, rejected, blank = map(int, counts.groups())
    assert (lines, train, val, unused, rejected, blank) == (13, 3, 2, 0, 7, 1)
    assert train + val + unused + rejected + blank == lines
    rows = {s: read(tmp_path / "out" / f"{s}.parquet").to_pylist() for s in ("train", "val")}
    assert (len(rows["train"]), len(rows["val"])) == (train, val)
    answers = {r["prompt"][0]["content"]: r["reward_model"]["ground_truth"] for r in rows["train"] + rows["val"]}
    assert answers["Year of the moon landing?"] == "1969"
    assert all(r["data_source"] == "afm/qa" for r in rows["train"] + rows["val"])


def test_qa_file_with_another_suite_and_bad_difficulties_are_usage_errors(tmp_path):
    assert run("--out", tmp_path, "--suite", "code", "--qa_file", tmp_path / "x.jsonl").returncode == 2
    assert run("--out", tmp_path, "--difficulties", "0,11").returncode == 2
    assert run("--out", tmp_path, "--suite", "qa", "--difficulties", "5").returncode == 2
    assert run("--out", tmp_path, "--suite", "qa", "--qa_file", tmp_path / "missing.jsonl").returncode == 1


def test_several_suites_at_once_and_unknown_ones_refused(tmp_path, world):
    result = run(
        "--out",
        tmp_path / "two",
        "--suite",
        "algorithmic,qa",
        "--world",
        world,
        "--difficulties",
        "1",
        "--n_train",
        10,
        "--n_val",
        5,
    )
    assert result.returncode == 0, result.stderr
    sources = set(read(tmp_path / "two" / "train.parquet").column("data_source").to_pylist())
    assert sources == {"afm/algorithmic", "afm/qa"}
    bad = run("--out", tmp_path / "bad", "--suite", "algorithmic,poetry")
    assert bad.returncode == 2 and "poetry" in bad.stderr
