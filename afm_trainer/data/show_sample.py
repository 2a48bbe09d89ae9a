"""One training sample as the model sees it, split into trained and untrained text.

``sample_spans(dataset, index)`` runs the dataset's own ``__getitem__`` (the chat
template applied message by message, truncation, the loss mask) and cuts the token
sequence wherever the loss mask changes, so what is marked trained is exactly what
``AgentSFTDataset`` puts a 1 on: no second reading of the ``train`` flags that could
disagree with the real one. ``render_plain`` and ``render_ansi`` draw the spans;
``scripts/show_sample.py`` is the command line.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from itertools import groupby

# Bold green on a terminal; [[...]] where colour is not available (pipes, logs, tests).
ANSI_TRAINED, ANSI_RESET = "\033[1;32m", "\033[0m"
PLAIN_OPEN, PLAIN_CLOSE = "[[", "]]"


@dataclass(frozen=True)
class Span:
    text: str
    trained: bool
    n_tokens: int


def token_runs(item: dict) -> list[tuple[list[int], bool]]:
    """(token ids, trained) runs of one dataset item, padding dropped."""
    ids = item["input_ids"].tolist()
    mask = item["loss_mask"].tolist()
    if "attention_mask" in item:  # pad_mode=right pads to max_length: not part of the sample
        keep = item["attention_mask"].tolist()
        ids, mask = [i for i, k in zip(ids, keep) if k], [m for m, k in zip(mask, keep) if k]
    runs = []
    for trained, group in groupby(zip(ids, mask), key=lambda pair: bool(pair[1])):
        runs.append(([token for token, _ in group], trained))
    return runs


def sample_spans(dataset, index: int) -> list[Span]:
    """The text of dataset[index] in runs of trained / untrained tokens.

    Runs are decoded separately; their boundaries fall on the chat template's special
    tokens (``<|im_start|>``, ``<|im_end|>``), so no character is split between two."""
    decode = dataset.tokenizer.decode
    return [
        Span(decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False), trained, len(ids))
        for ids, trained in token_runs(dataset[index])
    ]


def render_plain(spans: list[Span]) -> str:
    return "".join(f"{PLAIN_OPEN}{s.text}{PLAIN_CLOSE}" if s.trained else s.text for s in spans)


def render_ansi(spans: list[Span]) -> str:
    # Colour each line of a trained span on its own: pagers such as `less -R` reset
    # attributes at line ends, which would leave later lines of a long turn uncoloured.
    def colour(text: str) -> str:
        return "\n".join(f"{ANSI_TRAINED}{line}{ANSI_RESET}" if line else line for line in text.split("\n"))

    return "".join(colour(s.text) if s.trained else s.text for s in spans)


def summary(spans: list[Span]) -> str:
    total = sum(s.n_tokens for s in spans)
    trained = sum(s.n_tokens for s in spans if s.trained)
    runs = sum(s.trained for s in spans)
    return f"{total} tokens, {trained} trained (loss_mask = 1) in {runs} span(s)"


def load_dataset(
    parquet: str, tokenizer_path: str, max_length: int = 2048, truncation: str = "right", messages_key: str = "messages"
):
    """AgentSFTDataset over one parquet file, built the way verl's SFT trainer builds it
    (verl's tokenizer loader, the trainer's default packed pad mode)."""
    from omegaconf import OmegaConf
    from verl.utils import hf_tokenizer

    from afm_trainer.data.sft_dataset import AgentSFTDataset

    config = OmegaConf.create(
        {"pad_mode": "no_padding", "max_length": max_length, "truncation": truncation, "messages_key": messages_key}
    )
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # verl prints "dataset len: N"
        return AgentSFTDataset(parquet, hf_tokenizer(tokenizer_path), config)
