"""Preference pairs for verl's SFT engine: item i is pair i, both conversations tokenized
exactly as an SFT sample (``AgentSFTDataset``): the prompt untrained, the response and
its end-of-turn trained (the loss mask marks the tokens whose log-probabilities count).

Input: parquet with ``prompt``, ``chosen``, ``rejected`` (chat messages) and optional
``pair_id`` and ``weight`` (``afm_trainer.data.pairs``). ``PairCollator`` lays a batch out
as rows ``[chosen 0, rejected 0, chosen 1, rejected 1, ...]`` with each row's pair index,
so a trainer can keep a pair in one micro-batch and find its two halves again.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from verl.utils.dataset.dataset_utils import DatasetPadMode, SFTTensorCollator
from verl.utils.tokenizer.chat_template import extract_system_prompt_and_generation

from afm_trainer.data.convert import SCHEMA as SFT_SCHEMA
from afm_trainer.data.parquet_io import write_rows
from afm_trainer.data.sft_dataset import AgentSFTDataset

PAIR_COLUMNS = ("prompt", "chosen", "rejected")


def read_pairs(files: list[str]) -> list[dict]:
    """Every pair of the files, in order, with ``pair_id`` and ``weight`` filled in."""
    pairs = []
    for path in files:
        table = pq.read_table(path)
        missing = [c for c in PAIR_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"{path} has no {', '.join(missing)} column(s) (columns: {', '.join(table.column_names)})")
        if "pair_id" not in table.column_names:
            table = table.append_column("pair_id", pa.array([f"{path}#{i}" for i in range(len(table))]))
        if "weight" not in table.column_names:
            table = table.append_column("weight", pa.array([1.0] * len(table), pa.float64()))
        pairs += table.select([*PAIR_COLUMNS, "pair_id", "weight"]).to_pylist()
    return pairs


def chosen_as_sft(pair_files: list[str], output_file: str) -> int:
    """The chosen half of every pair as SFT data (``afm_trainer.data.convert.SCHEMA``):
    supervised fine-tuning on the preferred answers, the baseline a preference run is
    compared with (on on-policy pairs: rejection-sampling fine-tuning). Returns the rows."""
    rows = [
        {
            "messages": pair_conversations(pair)[0],
            "trajectory_id": pair["pair_id"],
            "step": 0,
            "answer": pair["chosen"][-1]["content"],
            "source_format": "preference pair (chosen)",
        }
        for pair in read_pairs(pair_files)
    ]
    write_rows(rows, SFT_SCHEMA, output_file)
    return len(rows)


def pair_conversations(pair: dict) -> tuple[list[dict], list[dict]]:
    """(prompt + chosen, prompt + rejected), only the response messages trained."""
    prompt = [{"role": m["role"], "content": m["content"], "train": False} for m in pair["prompt"]]

    def response(messages):
        return [{"role": m["role"], "content": m["content"], "train": True} for m in messages]

    return prompt + response(pair["chosen"]), prompt + response(pair["rejected"])


class PairDataset(AgentSFTDataset):
    def _read_files_and_process(self):
        self.pairs = read_pairs(list(self.parquet_files))
        if 0 < self.max_samples < len(self.pairs):
            self.pairs = self.pairs[: self.max_samples]
        print(f"preference pairs: {len(self.pairs)}")
        # Rows 2i and 2i+1 are pair i's two conversations, tokenized by the SFT dataset.
        self.messages = [conversation for pair in self.pairs for conversation in pair_conversations(pair)]
        self.dataframe = pd.DataFrame({self.messages_key: self.messages})
        self.tools, self.enable_thinking = None, None
        self.system_prompt, self.generation_prompt = extract_system_prompt_and_generation(
            self.tokenizer, **self.apply_chat_template_kwargs
        )
        self._refuse_special_tokens()

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        return {
            "chosen": super().__getitem__(2 * index),
            "rejected": super().__getitem__(2 * index + 1),
            "index": index,
            "weight": float(self.pairs[index]["weight"]),
        }


class PairCollator:
    """Pairs -> verl's no-padding batch of 2B rows plus, per row, ``pair_index`` (the
    pair's dataset index), ``is_chosen``, ``weight`` and, once a reference is attached
    (``reference``: a [N, 2] tensor of the reference's chosen/rejected log-probs),
    ``ref_logp``."""

    def __init__(self, reference: torch.Tensor | None = None):
        self.rows = SFTTensorCollator(DatasetPadMode.NO_PADDING)
        self.reference = reference

    def __call__(self, items: list[dict]) -> dict:
        rows = [row for item in items for row in (item["chosen"], item["rejected"])]
        batch = self.rows(rows)
        index = torch.tensor([item["index"] for item in items]).repeat_interleave(2)
        batch["pair_index"] = index
        batch["is_chosen"] = torch.tensor([True, False] * len(items))
        batch["weight"] = torch.tensor([item["weight"] for item in items], dtype=torch.float32).repeat_interleave(2)
        if self.reference is not None:
            batch["ref_logp"] = self.reference[index, (~batch["is_chosen"]).long()]
        return batch
