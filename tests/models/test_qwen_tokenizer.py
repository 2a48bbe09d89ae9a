"""Qwen2.5's tokenizer built from its published BPE ranks gives Qwen's published token ids
and renders Qwen2.5's chat template with tools."""

import pytest
from transformers import AutoTokenizer

from afm_trainer.models.qwen_tokenizer import TokenizerSourceError, build_qwen_tokenizer

# Inputs and ids as llama.cpp's tokenizer tests publish them for Qwen2's vocabulary
# (models/ggml-vocab-qwen2.gguf.inp / .out), copied by hand.
PUBLISHED_IDS = [
    ("Hello world", [9707, 1879]),
    (" Hello world", [21927, 1879]),
    (" Hello World!", [21927, 4337, 0]),
    ("Hello, world!", [9707, 11, 1879, 0]),
    ("    Hello\n    Hello", [262, 21927, 198, 262, 21927]),
    ("\n\n\n", [1406]),
    ("\t\n", [1572]),
    ("ied 4 ½ months", [1122, 220, 19, 220, 26062, 3951]),
    ("Führer", [37, 50753, 261]),
    (" this is 🦙.cpp", [419, 374, 11162, 99, 247, 13, 10821]),
    ("нещо на Български", [78762, 14144, 1456, 13073, 63471, 33594, 3038, 133178, 79012]),
    ("3333333", [18, 18, 18, 18, 18, 18, 18]),
    (
        "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
        [9707, 11, 379, 64848, 0, 2585, 525, 498, 26525, 223, 937, 104100, 18493, 22377, 99257]
        + [16, 18, 16, 19, 16, 20, 16, 35727, 21216],
    ),
]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return AutoTokenizer.from_pretrained(build_qwen_tokenizer(str(tmp_path_factory.mktemp("qwen"))))


def test_the_built_tokenizer_gives_the_published_ids(qwen):
    for text, ids in PUBLISHED_IDS:
        assert qwen.encode(text) == ids, text
        assert qwen.decode(ids) == text
    assert len(qwen) == 151665
    specials = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<tool_call>": 151657}
    assert {token: qwen.convert_tokens_to_ids(token) for token in specials} == specials
    assert qwen.eos_token == "<|im_end|>" and qwen.pad_token == "<|endoftext|>"


def test_the_chat_template_renders_tools_and_calls_as_qwen25_does(qwen):
    tool = {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}
    messages = [
        {"role": "user", "content": "Who wrote Carmen?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "search", "arguments": {"q": "Carmen"}}}],
        },
        {"role": "tool", "content": "Bizet"},
        {"role": "assistant", "content": "Bizet."},
    ]
    text = qwen.apply_chat_template(messages, tools=[tool], tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}\n</tools>\n\n'
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWho wrote Carmen?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "search", "arguments": {"q": "Carmen"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nBizet\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nBizet.<|im_end|>\n"
    )


def test_ranks_that_are_not_the_published_ones_are_refused(tmp_path):
    from afm_trainer.models.qwen_tokenizer import tiktoken_path

    with open(tiktoken_path(), "rb") as f:
        lines = f.read().splitlines()
    lines[1000], lines[1001] = lines[1001], lines[1000]  # two tokens' ranks swapped
    (tmp_path / "qwen.tiktoken").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(TokenizerSourceError, match="not the published qwen.tiktoken"):
        build_qwen_tokenizer(str(tmp_path / "out"), str(tmp_path / "qwen.tiktoken"))
