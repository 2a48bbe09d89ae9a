"""Preference pairs for verl's SFT engine: item i is pair i, both conversations tokenized
exactly as an SFT sample (``AgentSFTDataset``): the prompt unscored; in the response, the
assistant's turns and their end-of-turn scored (the loss mask marks the tokens whose
log-probabilities count) and an agent's tool results not: they are what the tools
returned, context for the policy's next turn, never its own tokens; so is tool output
written inside an assistant turn (``afm_trainer.traces.chat.untrained_spans``). Tool calls
and the pair's function schemas are rendered by the tokenizer's chat template.

Input: parquet with ``prompt``, ``chosen``, ``rejected`` (chat messages, optionally with
``tool_calls``) and optional ``pair_id``, ``weight`` and ``tools``
(``afm_trainer.data.pairs``). ``PairCollator`` lays a batch out as rows ``[chosen 0,
rejected 0, chosen 1, rejected 1, ...]`` with each row's pair index, so a trainer can keep
a pair in one micro-batch and find its two halves again.

A curriculum (``data.curriculum.key``, ``afm_trainer.data.curriculum``) reads the pair
file's other columns (``curriculum_frame``: ``pair_id``, ``source``, ``weight`` and any
column beyond the schema, such as a ``difficulty``), one row per pair; a pair's ``length``
is its longer conversation's tokens.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from verl.utils.dataset.dataset_utils import DatasetPadMode, SFTTensorCollator
from verl.utils.tokenizer.chat_template import extract_system_prompt_and_generation

from afm_trainer.data.convert import CHAT_SCHEMA, json_or_none
from afm_trainer.data.convert import SCHEMA as SFT_SCHEMA
from afm_trainer.data.parquet_io import write_rows
from afm_trainer.data.sft_dataset import AgentSFTDataset, decoded_json
from afm_trainer.traces.chat import untrained_spans

PAIR_COLUMNS = ("prompt", "chosen", "rejected")


def read_pairs(files: list[str]) -> list[dict]:
    """Every pair of the files, in order, with ``pair_id``, ``weight`` and ``tools`` filled in
    (tool calls and tools stay JSON text, as the files hold them)."""
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
        if "tools" not in table.column_names:
            table = table.append_column("tools", pa.nulls(len(table), pa.string()))
        pairs += table.select([*PAIR_COLUMNS, "pair_id", "weight", "tools"]).to_pylist()
    return pairs


def pair_columns(files: list[str], pairs: list[dict]) -> pd.DataFrame:
    """The files' columns other than the conversations and tools, one row per pair of
    ``pairs`` (``read_pairs`` of the files, maybe cut short), with its ``pair_id`` and
    ``weight`` filled in as ``read_pairs`` fills them."""
    skip = {*PAIR_COLUMNS, "tools"}
    frames = [
        pq.read_table(path, columns=[n for n in pq.read_schema(path).names if n not in skip]).to_pandas()
        for path in files
    ]
    frame = pd.concat(frames, ignore_index=True).iloc[: len(pairs)].copy()
    frame["pair_id"] = [pair["pair_id"] for pair in pairs]
    frame["weight"] = [pair["weight"] for pair in pairs]
    return frame


def pair_tools(pair: dict) -> list[dict] | None:
    """The pair's function schemas as the chat template takes them (None: no tools)."""
    return decoded_json(pair.get("tools"))


def chosen_as_sft(pair_files: list[str], output_file: str) -> int:
    """The chosen half of every pair as SFT data (``afm_trainer.data.convert.SCHEMA``):
    supervised fine-tuning on the preferred answers, the baseline a preference run is
    compared with (on on-policy pairs: rejection-sampling fine-tuning). Returns the rows.
    Pairs with tool calls, function schemas or tool output inside a turn give the chat
    formats' SFT rows (``CHAT_SCHEMA``)."""
    pairs = read_pairs(pair_files)
    rows = [
        {
            "messages": _as_json_text(pair_conversations(pair)[0]),
            "trajectory_id": pair["pair_id"],
            "step": 0,
            "answer": pair["chosen"][-1]["content"],
            "source_format": "preference pair (chosen)",
            "tools": json_or_none(pair_tools(pair)),
        }
        for pair in pairs
    ]
    with_tools = any(
        row["tools"] or any(m["tool_calls"] or m["untrained_spans"] for m in row["messages"]) for row in rows
    )
    write_rows(rows, CHAT_SCHEMA if with_tools else SFT_SCHEMA, output_file)
    return len(rows)


def pair_conversations(pair: dict) -> tuple[list[dict], list[dict]]:
    """(prompt + chosen, prompt + rejected) as the chat template takes them (tool calls as
    objects), each message's ``train`` flag true only on the response's assistant turns,
    whose tool output written inside the turn (``<information>...</information>``) is
    listed in ``untrained_spans``, as the chat formats' SFT samples list it."""
    prompt = [_message(m, train=False) for m in pair["prompt"]]

    def response(key):
        return [
            _message(m, train=m["role"] == "assistant", name=f"pair {pair['pair_id']}: {key}[{i}]")
            for i, m in enumerate(pair[key])
        ]

    return prompt + response("chosen"), prompt + response("rejected")


def _message(message: dict, train: bool, name: str = "") -> dict:
    out = {"role": message["role"], "content": message["content"], "train": train}
    if calls := decoded_json(message.get("tool_calls")):  # no null field: templates test for the key
        out["tool_calls"] = calls
    if train and (spans := untrained_spans(message["content"], name)):
        out["untrained_spans"] = spans
    return out


def _as_json_text(conversation: list[dict]) -> list[dict]:
    """The chat formats' SFT row shape (``CHAT_SCHEMA``): calls and untrained spans as JSON
    text (the SFT dataset checks the calls' text for special tokens, then decodes both)."""
    return [
        {
            **m,
            "tool_calls": json_or_none(m.get("tool_calls")),
            "untrained_spans": json_or_none(m.get("untrained_spans")),
        }
        for m in conversation
    ]


class PairDataset(AgentSFTDataset):
    def _read_files_and_process(self):
        self.pairs = read_pairs(list(self.parquet_files))
        if 0 < self.max_samples < len(self.pairs):
            self.pairs = self.pairs[: self.max_samples]
        print(f"preference pairs: {len(self.pairs)}")
        # Rows 2i and 2i+1 are pair i's two conversations, tokenized by the SFT dataset.
        self.messages = [
            _as_json_text(conversation) for pair in self.pairs for conversation in pair_conversations(pair)
        ]
        self.dataframe = pd.DataFrame({self.messages_key: self.messages})
        self.curriculum_frame = pair_columns(list(self.parquet_files), self.pairs)  # a row per pair
        tools = [pair_tools(pair) for pair in self.pairs for _ in range(2)]
        self.tools = tools if any(tools) else None
        self.enable_thinking = None
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
