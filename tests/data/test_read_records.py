"""Where records come from: a file (JSONL, JSON array, parquet), a folder saved by the
``datasets`` library, or a glob of files; each record keeps a location a user can find."""

import json
import os

import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from afm_trainer.data.convert import CONTEXT_MESSAGES, convert, read_records
from afm_trainer.data.parquet_io import InputError
from tests.conftest import REPO

SEARCH = os.path.join(REPO, "examples", "traces", "search_agent.jsonl")


def search_records() -> list[dict]:
    with open(SEARCH) as f:
        return [json.loads(line) for line in f]


def test_a_saved_dataset_converts_like_its_jsonl(tmp_path):
    Dataset.from_list(search_records()).save_to_disk(str(tmp_path / "saved"))
    convert(str(tmp_path / "saved"), str(tmp_path / "from_disk.parquet"), "auto", "stepwise")
    convert(SEARCH, str(tmp_path / "from_jsonl.parquet"), "search_agent", "stepwise")
    from_disk = pq.read_table(tmp_path / "from_disk.parquet").column(CONTEXT_MESSAGES).to_pylist()
    assert from_disk == pq.read_table(tmp_path / "from_jsonl.parquet").column(CONTEXT_MESSAGES).to_pylist()
    assert len(from_disk) > 4
    assert [location for location, _ in read_records(str(tmp_path / "saved"))] == [
        "index 0",
        "index 1",
        "index 2",
        "index 3",
    ]


def test_a_saved_dataset_dict_asks_for_a_split(tmp_path):
    DatasetDict({"train": Dataset.from_list(search_records())}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match=r"holds the splits train: give one of them, e.g. .*/dd/train"):
        list(read_records(str(tmp_path / "dd")))
    assert len(list(read_records(str(tmp_path / "dd" / "train")))) == 4


def test_a_folder_that_is_not_a_saved_dataset_is_one_error(tmp_path):
    with pytest.raises(InputError, match="is a folder, but not one written by the datasets library's save_to_disk"):
        list(read_records(str(tmp_path)))


def test_a_glob_reads_every_file_in_name_order_with_file_and_line(tmp_path):
    records = search_records()
    (tmp_path / "b.jsonl").write_text(json.dumps(records[2]) + "\nnot json\n")
    (tmp_path / "a.json").write_text(json.dumps(records[:2]))
    located = list(read_records(str(tmp_path / "*.json*")))
    assert [location for location, _ in located] == [
        f"{tmp_path}/a.json index 0",
        f"{tmp_path}/a.json index 1",
        f"{tmp_path}/b.jsonl line 1",
        f"{tmp_path}/b.jsonl line 2",
    ]
    assert isinstance(located[3][1], Exception)  # the broken line is a reject, not the end of the run
    with pytest.raises(InputError, match="no file matches"):
        list(read_records(str(tmp_path / "*.parquet")))


def test_a_hub_name_fails_in_one_line_offline():
    with pytest.raises(InputError, match="datasets are not downloaded from a hub: save one with"):
        list(read_records("PeterGriffinJin/nq_hotpotqa_train"))
