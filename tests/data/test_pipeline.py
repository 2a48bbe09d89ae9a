"""run_pipeline.sh: search-agent traces -> the three training sets, split by trajectory."""

import os
import subprocess
import sys

import pandas as pd
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from afm_trainer.data.convert import CONTEXT_MESSAGES
from afm_trainer.data.sft_dataset import AgentSFTDataset
from afm_trainer.data.splits import split_by_trajectory
from tests.conftest import REPO
from tests.data.test_convert_traces import SEARCH, write_jsonl


def test_pipeline_makes_three_sets_with_no_trajectory_in_both_splits(tmp_path, nano_model):
    records = [{**SEARCH, "id": f"t{i}", "question": f"Where was person {i} born?"} for i in range(30)]
    records.append({"question": "broken", "trace": []})
    src = write_jsonl(tmp_path / "in.jsonl", records)
    result = subprocess.run(
        ["bash", os.path.join(REPO, "data_preprocess", "run_pipeline.sh"), src, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 rejected" in result.stdout
    val_ids = None
    tokenizer = AutoTokenizer.from_pretrained(nano_model)
    config = OmegaConf.create({"pad_mode": "no_padding", "max_length": 4096, "truncation": "error"})
    for name, per_trajectory in (("multiturn", 1), ("summary_only", 3), ("summary_prefix", 3)):
        train = pd.read_parquet(tmp_path / "out" / name / "train.parquet")
        val = pd.read_parquet(tmp_path / "out" / name / "val.parquet")
        assert len(train) + len(val) == 30 * per_trajectory
        assert not set(train["trajectory_id"]) & set(val["trajectory_id"])
        assert val_ids is None or set(val["trajectory_id"]) == val_ids  # same split in every set
        val_ids = set(val["trajectory_id"])
        assert len(val_ids) == 3
        dataset = AgentSFTDataset(str(tmp_path / "out" / name / "train.parquet"), tokenizer, config)
        assert dataset[0]["loss_mask"].sum() > 0
    # The prefix set's context holds assistant turns (verl's own dataset refuses it); the other set's does not.
    prefix = pd.read_parquet(tmp_path / "out" / "summary_prefix" / "train.parquet")[CONTEXT_MESSAGES][0]
    assert prefix[-1]["content"].startswith("<summary>Question: ")
    only = pd.read_parquet(tmp_path / "out" / "summary_only" / "train.parquet")["messages"][0]
    assert len(only) == 2 and only[0]["content"].startswith("Question: ")


def test_split_is_stratified_by_label_and_grouped():
    rows = [
        {"trajectory_id": f"t{i}", "step": s, "answer": "yes" if i < 80 else "no"} for i in range(100) for s in range(3)
    ]
    train, val = split_by_trajectory(rows, 0.1, seed=42)
    val_ids = {r["trajectory_id"] for r in val}
    assert len(val_ids) == 10 and sum(int(t[1:]) >= 80 for t in val_ids) == 2  # 8 yes, 2 no
    assert all(sum(r["trajectory_id"] == t for r in val) == 3 for t in val_ids)
    assert split_by_trajectory(rows, 0.1, seed=42)[1] == val
    assert {r["trajectory_id"] for r in split_by_trajectory(rows, 0.1, seed=7)[1]} != val_ids


def test_shards_are_written(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"trajectory_id": f"t{i}", "messages": [{"role": "user", "content": "q", "train": False}]} for i in range(20)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    script = os.path.join(REPO, "data_preprocess", "prepare_train_val.py")
    result = subprocess.run(
        [
            sys.executable,
            script,
            "--input_file",
            str(tmp_path / "in.parquet"),
            "--output_dir",
            str(tmp_path / "o"),
            "--shards",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    names = sorted(name for name in os.listdir(tmp_path / "o") if name != "split.report.json")
    assert names == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
        "val-00000-of-00002.parquet",
        "val-00001-of-00002.parquet",
    ]
    total = sum(len(pd.read_parquet(tmp_path / "o" / n)) for n in names)
    assert total == 20
    # read in order, the shards are the split in order: a run on them sees the rows one file gives
    from afm_trainer.data.splits import split_by_trajectory

    train, _ = split_by_trajectory(rows, 0.1, seed=42)
    shards = [pd.read_parquet(tmp_path / "o" / n) for n in names[:2]]
    assert [t for shard in shards for t in shard["trajectory_id"]] == [r["trajectory_id"] for r in train]
