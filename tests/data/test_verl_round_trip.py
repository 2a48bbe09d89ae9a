"""afm-trainer's SFT parquet and verl's own: each loads in the other's dataset, and what
differs is said, not silent."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
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


def test_verls_own_dataset_refuses_a_file_whose_context_it_would_train(tmp_path, nano_model):
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
    assert report["messages_column"] == "messages_with_untrained_turns"
    assert "note: 7 samples hold assistant text that is context" in result.stdout
    assert "data.custom_cls.name=AgentSFTDataset" in result.stdout
    tokenizer = AutoTokenizer.from_pretrained(nano_model)
    with pytest.raises(KeyError, match="messages"):
        MultiTurnSFTDataset(out, tokenizer, CONFIG)
    steps = AgentSFTDataset(out, tokenizer, CONFIG)
    target = (
        "<think>First I need the country of the Rijksmuseum.</think>\n<search>Rijksmuseum location</search><|im_end|>"
    )
    assert len(steps) == 11 and tokenizer.decode(trained_ids(steps, 0)) == target
    result = subprocess.run(
        [*cmd, "--mode", "multiturn", "--input_file", SEARCH, "--output_file", out], capture_output=True, text=True
    )
    assert "note:" not in result.stdout
    assert pq.read_schema(out).names[0] == "messages"


def test_a_span_of_tool_output_inside_a_turn_is_refused_by_verls_own_dataset(tmp_path, nano_model):
    # One of the four conversations holds an <observation> span in an assistant turn.
    src = os.path.join(REPO, "examples", "traces", "messages.jsonl")
    report = convert(src, str(tmp_path / "spans.parquet"), "auto", "multiturn")
    assert (report["samples_out"], report["samples_with_untrained_assistant_turns"]) == (4, 1)
    with pytest.raises(KeyError, match="messages"):
        MultiTurnSFTDataset(str(tmp_path / "spans.parquet"), AutoTokenizer.from_pretrained(nano_model), CONFIG)


def test_files_with_and_without_context_train_together_as_each_alone(tmp_path, nano_model):
    convert(SEARCH, str(tmp_path / "multi.parquet"), "search_agent", "multiturn")
    convert(SEARCH, str(tmp_path / "steps.parquet"), "search_agent", "stepwise")
    tokenizer = AutoTokenizer.from_pretrained(nano_model)
    files = [str(tmp_path / "multi.parquet"), str(tmp_path / "steps.parquet")]
    alone = [AgentSFTDataset(f, tokenizer, CONFIG) for f in files]
    together = AgentSFTDataset(files, tokenizer, CONFIG)
    rows = [(d, row) for d in alone for row in range(len(d))]
    assert len(together) == len(rows) == 4 + 11
    for row, (dataset, own_row) in enumerate(rows):
        assert together[row]["input_ids"].tolist() == dataset[own_row]["input_ids"].tolist()
        assert together[row]["loss_mask"].tolist() == dataset[own_row]["loss_mask"].tolist()


def test_the_sft_recipe_refuses_context_for_verls_own_dataset_in_one_line(tmp_path, nano_model):
    from tests.conftest import run_recipe

    convert(SEARCH, str(tmp_path / "steps.parquet"), "search_agent", "stepwise")
    args = [1, tmp_path / "out", f"MODEL={nano_model}", f"TRAIN_FILES={tmp_path / 'steps.parquet'}", "DRY_RUN=1"]
    result = run_recipe(*args, "data.custom_cls.path=null")
    assert result.returncode != 0
    assert "holds assistant turns that are context" in result.stderr
    assert "Traceback" not in result.stderr
    assert run_recipe(*args).returncode == 0  # afm-trainer's dataset, the default, reads it


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
