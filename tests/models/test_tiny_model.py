import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from afm_trainer.models.special_tokens import PROJECT_TOKENS, add_project_tokens, check_single_tokens
from afm_trainer.models.tiny import build_tokenizer

CONVERSATION = [
    {"role": "user", "content": "What is 12 + 30?"},
    {"role": "assistant", "content": "<think>12 + 30 = 42</think><search>sum</search>"},
    {"role": "tool", "content": "<information>no result</information>"},
    {"role": "assistant", "content": "<|planner|>add<|coder|>12+30<|reviewer|>ok<answer>42</answer>"},
]


@pytest.fixture(scope="module")
def tokenizer(nano_model):
    return AutoTokenizer.from_pretrained(nano_model)


def test_every_project_token_is_one_token_and_survives_decoding(tokenizer):
    check_single_tokens(tokenizer)
    for token in PROJECT_TOKENS:
        ids = tokenizer.encode(f"x {token} y", add_special_tokens=False)
        assert tokenizer.convert_tokens_to_ids(token) in ids
        assert token in tokenizer.decode(ids, skip_special_tokens=True)


def test_digits_are_one_token_each(tokenizer):
    assert len(tokenizer.encode("1234567890", add_special_tokens=False)) == 10


def test_pad_and_eos_are_set_and_distinct(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_chat_template_is_chatml_and_round_trips(tokenizer):
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in CONVERSATION)
    assert text == expected
    ids = tokenizer.apply_chat_template(CONVERSATION, tokenize=True)["input_ids"]
    assert tokenizer.decode(ids) == text
    # verl's MultiTurnSFTDataset templates message by message; the pieces must add up
    # to the whole conversation's ids or its sanity check fails.
    pieces = [tokenizer.apply_chat_template([m], tokenize=True)["input_ids"] for m in CONVERSATION]
    assert sum(pieces, []) == ids


def test_chat_template_renders_tools_as_qwen2_5_and_message_by_message(tokenizer):
    tools = [{"type": "function", "function": {"name": "area", "parameters": {"type": "object"}}}]
    call = {"type": "function", "function": {"name": "area", "arguments": {"w": 2}}}
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Area?"},
        {"role": "assistant", "content": "", "tool_calls": [call, call]},
        {"role": "tool", "content": "4"},
        {"role": "tool", "content": "4"},
        {"role": "assistant", "content": "4."},
    ]
    text = tokenizer.apply_chat_template(conversation, tools=tools, tokenize=False)
    assert text.startswith(
        "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist with the user "
        'query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{"type": '
        '"function", "function": {"name": "area", "parameters": {"type": "object"}}}\n</tools>\n\n'
    )
    one_call = '\n<tool_call>\n{"name": "area", "arguments": {"w": 2}}\n</tool_call>'
    assert text.endswith(
        f"<|im_start|>user\nArea?<|im_end|>\n<|im_start|>assistant{one_call}{one_call}<|im_end|>\n"
        "<|im_start|>tool\n4<|im_end|>\n<|im_start|>tool\n4<|im_end|>\n<|im_start|>assistant\n4.<|im_end|>\n"
    )
    # verl renders the first message with the tools, the others alone, and checks the sum.
    ids = tokenizer.apply_chat_template(conversation, tools=tools, tokenize=True)["input_ids"]
    pieces = [
        tokenizer.apply_chat_template([m], tools=tools if i == 0 else None, tokenize=True)["input_ids"]
        for i, m in enumerate(conversation)
    ]
    assert sum(pieces, []) == ids


def test_model_loads_offline_and_generates(nano_model, tokenizer):
    code = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer;"
        f"m = AutoModelForCausalLM.from_pretrained({nano_model!r});"
        f"t = AutoTokenizer.from_pretrained({nano_model!r});"
        "ids = t.apply_chat_template([{'role': 'user', 'content': 'hi'}], add_generation_prompt=True,"
        " return_tensors='pt', return_dict=True);"
        "out = m.generate(**ids, max_new_tokens=5, do_sample=False);"
        "print(out.shape[1] - ids['input_ids'].shape[1])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""}
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip().splitlines()[-1]) >= 1
    model = AutoModelForCausalLM.from_pretrained(nano_model)
    assert model.config.model_type == "qwen2"
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)


def test_add_project_tokens_to_an_existing_model():
    from transformers import Qwen2Config

    plain = build_tokenizer(vocab_size=400, corpus=["plain text without tags 123"] * 10)
    # Start from a tokenizer without the project's tokens, as a user's model would be.
    plain = AutoTokenizer.from_pretrained(_save_without_project_tokens(plain))
    assert len(plain.encode("<think>", add_special_tokens=False)) > 1
    model = AutoModelForCausalLM.from_config(
        Qwen2Config(
            vocab_size=len(plain),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    old_rows = model.get_input_embeddings().weight.detach().clone()
    added = add_project_tokens(plain, model)
    assert added == len(PROJECT_TOKENS)
    check_single_tokens(plain)
    new_rows = model.get_input_embeddings().weight
    assert new_rows.shape[0] == len(plain)
    assert torch.equal(new_rows[: old_rows.shape[0]], old_rows)  # old embeddings untouched
    assert add_project_tokens(plain, model) == 0  # idempotent


def _save_without_project_tokens(tokenizer):
    import json
    import os
    import tempfile

    folder = tempfile.mkdtemp()
    tokenizer.save_pretrained(folder)
    path = os.path.join(folder, "tokenizer.json")
    with open(path) as f:
        data = json.load(f)
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in PROJECT_TOKENS]
    with open(path, "w") as f:
        json.dump(data, f)
    return folder


def test_tiny_cli_reports_size(tmp_path):
    out = tmp_path / "m"
    result = subprocess.run(
        [sys.executable, "-m", "afm_trainer.models.tiny", "--out", str(out), "--size", "nano"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "parameters" in result.stdout and (out / "config.json").exists()
    assert not (tmp_path / "m.tmp").exists()
