"""afm-trainer's SFT parquet and verl's own: each loads in the other's dataset, and what
differs is said, not silent."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import OmegaConf
from transformers import AutoTokenizer
from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

from afm_trainer.data.convert import convert
from afm_trainer.data.sft_dataset import AgentSFTDataset
from tests.conftest import REPO

CONFIG = OmegaConf.create({"pad_mode": "no_padding", "max_length": 4096, "truncation": "error"})
SEARCH = os.path.join(REPO, "examples", "traces", "search_agent.jsonl")


def trained_ids(dataset, row: int) -> list[int]:
    item = dataset[row]
    return [t for t, m in zip(item["input_ids"].tolist(), item["loss_mask"].tolist()) if m]


def test_a_multiturn_file_trains_the_same_turns_under_verls_own_dataset(tmp_path, nano_model):
    convert(SEARCH, str(tmp_path / "multi.parquet"), "search_agent", "multiturn")
    tokenizer = AutoTokenizer.from_pretrained(nano_model)
    ours = AgentSFTDataset(str(tmp_path / "multi.parquet"), tokenizer, CONFIG)
    verls = MultiTurnSFTDataset(str(tmp_path / "multi.parquet"), tokenizer, CONFIG)
    end = tokenizer.eos_token_id
    for row in range(len(ours)):
        assert ours[row]["input_ids"].tolist() == verls[row]["input_ids"].tolist()
        # verl also trains the newline the template writes after each <|im_end|>; nothing else differs.
        theirs = trained_ids(verls, row)
        after_end = [t for i, t in enumerate(theirs) if i and theirs[i - 1] == end]
        assert tokenizer.decode(after_end).strip("\n") == ""
        assert [t for i, t in enumerate(theirs) if not (i and theirs[i - 1] == end)] == trained_ids(ours, row)


def test_stepwise_files_say_that_verls_own_dataset_would_train_their_context(tmp_path):
    out = str(tmp_path / "steps.parquet")
    cmd = [sys.executable, os.path.join(REPO, "data_preprocess", "convert_traces.py"), "--format", "search_agent"]
    result = subprocess.run(
        [*cmd, "--mode", "stepwise", "--input_file", SEARCH, "--output_file", out], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    with open(out + ".report.json") as f:
        report = json.load(f)
    # 4 traces, 11 decision points: every step after a trace's first has earlier turns as context.
    assert (report["samples_out"], report["samples_with_untrained_assistant_turns"]) == (11, 7)
    assert "note: 7 samples hold assistant turns that are context" in result.stdout
    assert "data.custom_cls.name=AgentSFTDataset" in result.stdout
    result = subprocess.run(
        [*cmd, "--mode", "multiturn", "--input_file", SEARCH, "--output_file", out], capture_output=True, text=True
    )
    assert "note:" not in result.stdout


def test_verls_own_multiturn_parquet_with_tools_converts_as_is(tmp_path, nano_model):
    tool = {
        "type": "function",
        "function": {"name": "lookup", "description": "Look a word up", "parameters": {"type": "object"}},
    }
    call = {"type": "function", "function": {"name": "lookup", "arguments": '{"word": "fjord"}'}}
    rows = [
        {
            "messages": [
                {"role": "user", "content": "What is a fjord?", "tool_calls": None},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "a long, narrow sea inlet", "tool_calls": None},
                {"role": "assistant", "content": "A long, narrow inlet of the sea.", "tool_calls": None},
            ],
            "tools": [tool],
        }
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "verl_sft.parquet")
    report = convert(str(tmp_path / "verl_sft.parquet"), str(tmp_path / "out.parquet"), "auto")
    assert (report["format"], report["records_converted"]) == ("messages", 1)
    tokenizer = AutoTokenizer.from_pretrained(nano_model)
    ids = trained_ids(AgentSFTDataset(str(tmp_path / "out.parquet"), tokenizer, CONFIG), 0)
    assert tokenizer.decode(ids) == (
        '<tool_call>\n{"name": "lookup", "arguments": {"word": "fjord"}}\n</tool_call><|im_end|>'
        "A long, narrow inlet of the sea.<|im_end|>"
    )
