"""A split never puts a copy on the other side of its source: upsampled copies (ID#copyN)
and augmentations (ID#augN, ID#augN#copyM) go where their source goes, in every split
(prepare_train_val's, and the per-record split of make_afm_data / make_self_improve_data)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from afm_trainer.data.convert import convert
from afm_trainer.data.self_improve import split_file
from afm_trainer.data.splits import source_id, split_by_trajectory
from tests.data.cli import run_cli
from tests.data.test_convert_traces import SEARCH

COPIES = ["", "#copy1", "#copy2", "#aug1", "#aug2", "#aug1#copy1"]


def test_source_id_drops_copy_and_augmentation_suffixes():
    assert [source_id(i) for i in ["s1#copy2", "s1#aug3", "s1#aug1#copy2", "line 3#copy1", "s1"]] == [
        "s1",
        "s1",
        "s1",
        "line 3",
        "s1",
    ]
    assert [source_id(i) for i in ["a#b", "t#copyX", "t#aug", "copy1"]] == ["a#b", "t#copyX", "t#aug", "copy1"]


def rows(sources: int = 12) -> list[dict]:
    """Two samples of each trajectory: every source, its copies and its augmentations."""
    return [
        {"trajectory_id": f"s{k}{suffix}", "step": step, "answer": "yes" if k % 2 else "no"}
        for k in range(sources)
        for suffix in COPIES
        for step in (0, 1)
    ]


def sides(train: list[dict], val: list[dict], column: str = "trajectory_id") -> tuple[set, set]:
    return {source_id(r[column]) for r in train}, {source_id(r[column]) for r in val}


@pytest.mark.parametrize("seed", range(8))
def test_no_source_is_on_both_sides_of_the_trajectory_split(seed):
    train, val = split_by_trajectory(rows(), 0.25, seed)
    train_sources, val_sources = sides(train, val)
    assert not train_sources & val_sources
    # A quarter of each label's 6 sources (rounded: 2), each with its 6 trajectories of 2 samples.
    assert len(val_sources) == 4 and len(val) == 4 * 6 * 2 and len(train) == 8 * 6 * 2
    assert sorted(r["answer"] for r in val if r["step"] == 0 and "#" not in r["trajectory_id"]) == [
        "no",
        "no",
        "yes",
        "yes",
    ]


def test_the_per_record_split_keeps_augmentations_of_copies_with_their_source(tmp_path):
    source = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(rows(40)), source)
    for seed in range(4):
        split_file(str(source), str(tmp_path / f"s{seed}"), "trajectory_id", 0.3, seed)
        train = pq.read_table(tmp_path / f"s{seed}" / "train.parquet").to_pylist()
        val = pq.read_table(tmp_path / f"s{seed}" / "val.parquet").to_pylist()
        train_sources, val_sources = sides(train, val)
        assert val_sources and not train_sources & val_sources
        assert len(train) + len(val) == 40 * 6 * 2


def test_upsampled_copies_stay_with_their_source_through_prepare_train_val(tmp_path, capsys):
    def record(k: int, answer: str) -> dict:
        trace = [*SEARCH["trace"][:-1], {"type": "CorrectAnswer", "content": answer}]
        return {**SEARCH, "id": f"q{k}", "trace": trace}

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(record(k, "yes" if k < 9 else "no")) + "\n" for k in range(12)))
    convert(str(src), str(tmp_path / "c.parquet"), "search_agent", mode="stepwise", balance="upsample")
    ids = set(pq.read_table(tmp_path / "c.parquet")["trajectory_id"].to_pylist())
    assert {i for i in ids if "#" in i} == {f"q{k}#copy{c}" for k in (9, 10, 11) for c in (1, 2)}
    for seed in range(4):
        out = tmp_path / f"split{seed}"
        argv = ["--input_file", tmp_path / "c.parquet", "--output_dir", out, "--val_ratio", "0.3", "--seed", seed]
        assert run_cli("prepare_train_val", *argv, capsys=capsys)[0] == 0
        train = pq.read_table(out / "train.parquet").to_pylist()
        val = pq.read_table(out / "val.parquet").to_pylist()
        train_sources, val_sources = sides(train, val)
        assert not train_sources & val_sources
        # 0.3 of each label's sources: 3 of the 9 yes, 1 of the 3 no (with its two copies).
        assert len(val_sources) == 4 and len({r["trajectory_id"] for r in val}) == 3 + 3
