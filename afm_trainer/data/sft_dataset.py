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
A file in which some assistant text is context holds its messages under
``messages_with_untrained_turns`` (``afm_trainer.data.convert.CONTEXT_MESSAGES``), a
column verl's own dataset refuses; with the default ``messages_key`` this dataset reads
either name, files of both kinds together included.
verl's own check that message-by-message tokenisation equals the full chat template
stays on (``data.ignore_input_ids_mismatch: false``), so a template that does not
split cleanly fails loudly instead of training misaligned tokens.
"""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import torch
from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset
from verl.utils.py_functional import convert_nested_value_to_list_recursive

from afm_trainer.data.convert import CONTEXT_MESSAGES, messages_column
from afm_trainer.models.special_tokens import first_of, special_tokens_of


class AgentSFTDataset(MultiTurnSFTDataset):
    def _read_files_and_process(self):
        names = {messages_column(pq.read_schema(path).names) for path in self.parquet_files}
        if self.messages_key == "messages" and CONTEXT_MESSAGES in names:
            self.messages_key = CONTEXT_MESSAGES
        super()._read_files_and_process()
        if len(names) > 1 and self.messages_key == CONTEXT_MESSAGES:  # rows of plain files have it empty
            column = self.dataframe[CONTEXT_MESSAGES]
            self.dataframe[CONTEXT_MESSAGES] = column.where(column.notna(), self.dataframe["messages"])
            self.messages = self.dataframe[CONTEXT_MESSAGES].apply(convert_nested_value_to_list_recursive).tolist()
        if self.tools is not None:
            self.tools = [decoded_json(tools) for tools in self.tools]
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
            for key in ("tool_calls", "untrained_spans"):
                if key in message:
                    value = decoded_json(message.pop(key))
                    if value:
                        message[key] = value
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
                if message.get("untrained_spans"):
                    loss_mask[self._tokens_in_spans(message, input_ids, tools, enable_thinking)] = 0
        return input_ids, loss_mask, attention_mask, inputs

    def _tokens_in_spans(self, message, input_ids, tools, enable_thinking) -> torch.Tensor:
        """Which of the message's tokens overlap its untrained spans (tool output inside the
        turn): the message rendered as text, tokenized with character offsets, must give the
        same ids as the template's own tokenisation, or the data is refused."""
        kwargs = dict(self.apply_chat_template_kwargs)
        if enable_thinking is not None:
            kwargs["enable_thinking"] = enable_thinking
        text = self.tokenizer.apply_chat_template([message], tools=tools, tokenize=False, **kwargs)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"][-len(input_ids) :], encoded["offset_mapping"][-len(input_ids) :]
        content_at = text.find(message["content"])
        if ids != input_ids.tolist() or text.count(message["content"]) != 1:  # the spans' offsets must be unambiguous
            raise ValueError("a turn with untrained spans does not tokenize the same as text and as a chat turn")
        spans = [(content_at + start, content_at + end) for start, end in message["untrained_spans"]]
        return torch.tensor([any(s < e_tok and s_tok < e for s, e in spans) for s_tok, e_tok in offsets])


def decoded_json(value):
    """A column the converter wrote as JSON text, as the chat template takes it (None: absent)."""
    if value is None or pd.isna(value) is True:  # pandas reads a null as NA
        return None
    return json.loads(value) if isinstance(value, str) else value
