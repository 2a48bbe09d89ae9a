"""verl's multi-turn SFT dataset, plus a per-message ``train`` flag.

Use it with ``data.custom_cls.path=pkg://afm_trainer.data.sft_dataset
data.custom_cls.name=AgentSFTDataset`` (the recipes do). verl's own
``MultiTurnSFTDataset`` trains every assistant message; stepwise samples need only the
target turn trained, or each turn of a trajectory is trained once per later step.

What is trained, per message (a token is trained when its loss-mask bit is 1; verl's
loss shifts the mask by one so the bit marks the token being predicted):
- assistant with ``train`` true or absent: the content and the end-of-turn token
  ``<|im_end|>``, not the ``<|im_start|>assistant\\n`` header and not the newline the
  template writes after the end-of-turn (that newline is never generated);
- every other message: nothing.
Samples of the chat formats (``afm_trainer.data.convert.CHAT_SCHEMA``) carry an assistant
turn's ``tool_calls`` and the conversation's ``tools`` as JSON text; they are decoded
here and rendered by the tokenizer's chat template, so the trained tokens of a call are
the template's (``\n<tool_call>\n{...}\n</tool_call>`` for Qwen2.5) and the function
schemas sit where the template puts them.
Text holding one of the tokenizer's special tokens (``<|im_end|>`` inside a document)
would be trained as the control token itself: such data is refused when the dataset is
built, naming the row (the converters reject these records before they get here).
verl's own check that message-by-message tokenisation equals the full chat template
stays on (``data.ignore_input_ids_mismatch: false``), so a template that does not
split cleanly fails loudly instead of training misaligned tokens.
"""

from __future__ import annotations

import json

import pandas as pd
import torch
from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

from afm_trainer.models.special_tokens import first_of, special_tokens_of


class AgentSFTDataset(MultiTurnSFTDataset):
    def _read_files_and_process(self):
        super()._read_files_and_process()
        if self.tools is not None:
            self.tools = [_decoded(tools) for tools in self.tools]
        self._refuse_special_tokens()

    def _refuse_special_tokens(self):
        special = special_tokens_of(self.tokenizer)
        for row, messages in enumerate(self.messages):
            if self.tools is not None and (token := first_of(special, json.dumps(self.tools[row] or ""))):
                raise ValueError(f"data row {row}: its tools hold {token!r}, a special token of the tokenizer")
            for i, message in enumerate(messages):
                calls = message.get("tool_calls")  # still JSON text here
                text = (message.get("content") or "") + (calls if isinstance(calls, str) else "")
                if token := first_of(special, text):
                    raise ValueError(
                        f"data row {row}: messages[{i}] ({message['role']}) holds {token!r}, a special token of "
                        "the tokenizer; text is never trained as a control token (remove it from the data)"
                    )

    def _build_messages(self, example: dict):
        messages = super()._build_messages(example)
        for message in messages:
            if "tool_calls" in message:
                calls = _decoded(message.pop("tool_calls"))
                if calls:
                    message["tool_calls"] = calls
        return messages

    def _process_single_message(self, index, message, full_message, tools=None, enable_thinking=None):
        input_ids, loss_mask, attention_mask, inputs = super()._process_single_message(
            index, message, full_message, tools=tools, enable_thinking=enable_thinking
        )
        if message["role"] == "assistant":
            if message.get("train") is False:
                loss_mask = torch.zeros_like(loss_mask)
            else:
                eos_positions = (input_ids == self.tokenizer.eos_token_id).nonzero()
                if len(eos_positions):  # nothing after the end-of-turn token is trained
                    loss_mask[int(eos_positions[-1]) + 1 :] = 0
        return input_ids, loss_mask, attention_mask, inputs


def _decoded(value):
    """A column the converter wrote as JSON text, as the chat template takes it (None: absent)."""
    if value is None or pd.isna(value) is True:  # pandas reads a null as NA
        return None
    return json.loads(value) if isinstance(value, str) else value
