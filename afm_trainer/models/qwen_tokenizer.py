"""Qwen2.5's tokenizer, built here from its published BPE ranks (nothing from a model hub).

    python -m afm_trainer.models.qwen_tokenizer OUT_DIR

writes a tokenizer folder that ``AutoTokenizer.from_pretrained`` loads: 151,643 byte-level
BPE tokens and the 22 added tokens (``<|endoftext|>`` = 151643, ``<|im_start|>``,
``<|im_end|>``, ``<tool_call>``, ...), with Qwen2.5-Instruct's chat template (tools in a
``<tools>`` block of the system turn, calls as ``<tool_call>\n{...}\n</tool_call>``).

Where the vocabulary comes from: ``qwen.tiktoken``, the BPE ranks Qwen publishes for its
tokenizers (Qwen1.5, Qwen2, Qwen2.5 and Qwen3 share them), as Alibaba Cloud's own SDK on
PyPI ships it (``dashscope==2.0.2``, Apache-2.0, ``dashscope/resources/qwen.tiktoken``;
``make install`` installs the package without its dependencies: only the file is read).
The file is checked against its sha256, the ranks are turned into GPT-2 byte-level vocab
and merges (a token's merge is the one BPE replays to make it from lower ranks), and
``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` are checked byte for byte
against the sha256 of the files published with Qwen/Qwen2.5-0.5B-Instruct: a build that
differs in one token, one merge's order or one character of the template stops.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import json
import os
import sys

DASHSCOPE = "dashscope==2.0.2"
QWEN_TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
# sha256 and size of the files published with Qwen/Qwen2.5-0.5B-Instruct (revision 7ae5576)
PUBLISHED = {
    "vocab.json": ("ca10d7e9fb3ed18575dd1e277a2579c16d108e32f27439684afa0e10b1440910", 2776833),
    "merges.txt": ("599bab54075088774b1733fde865d5bd747cbcc7a547c5bc12610e874e26f5e3", 1671839),
    "tokenizer_config.json": ("5b5d4f65d0acd3b2d56a35b56d374a36cbc1c8fa5cf3b3febbbfabf22f359583", 7305),
}
N_RANKS, N_MERGES = 151643, 151387
VOCAB_SIZE = 151936  # Qwen2.5 models' embedding rows: the 151,665 tokens, padded

PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

ADDED_TOKENS = [  # (content, special) for ids 151643.. in order
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
FIRST_ADDED_ID = 151643

# Qwen2.5-Instruct chat template (with tools), verbatim from Qwen/Qwen2.5-*-Instruct
# tokenizer_config.json (the whole tokenizer_config.json written below is byte-identical to
# the published one, see PUBLISHED).
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'  # noqa: E501 (the template, verbatim)
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'  # noqa: E501 (the template, verbatim)
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}\n'  # noqa: E501 (the template, verbatim)
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n'
    "            {{- tool_call.name }}\n"
    '            {{- \'", "arguments": \' }}\n'
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)


class TokenizerSourceError(RuntimeError):
    """The BPE ranks are missing or are not the published ones (one line)."""


def tiktoken_path() -> str:
    """qwen.tiktoken inside the installed dashscope package (the package is not imported)."""
    spec = importlib.util.find_spec("dashscope")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = os.path.join(folders[0], "resources", "qwen.tiktoken") if folders else ""
    if not os.path.isfile(path):
        raise TokenizerSourceError(f"qwen.tiktoken not found: install it with `pip install --no-deps {DASHSCOPE}`")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (transformers' ``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def read_ranks(path: str) -> dict[bytes, int]:
    with open(path, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != QWEN_TIKTOKEN_SHA256:
        raise TokenizerSourceError(f"{path} is not the published qwen.tiktoken (its sha256 differs)")
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The byte-level vocab and merges of tiktoken ranks: a token of rank r is made by the
    one merge that BPE, using only merges of lower rank, ends with on its bytes."""
    byte_char = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(byte_char[b] for b in token)

    def parts_before(token: bytes, rank: int) -> list[bytes]:
        parts = [bytes([b]) for b in token]
        while True:
            pairs = [(ranks.get(parts[i] + parts[i + 1]), i) for i in range(len(parts) - 1)]
            best = min(((r, i) for r, i in pairs if r is not None and r < rank), default=None)
            if best is None:
                return parts
            i = best[1]
            parts[i : i + 2] = [parts[i] + parts[i + 1]]

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            parts = parts_before(token, rank)
            if len(parts) != 2:
                raise TokenizerSourceError(f"token of rank {rank} is not made by one merge")
            merges.append((text(parts[0]), text(parts[1])))
    return {text(t): r for t, r in ranks.items()}, merges


def tokenizer_files(vocab: dict[str, int], merges: list[tuple[str, str]]) -> dict[str, bytes]:
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    token_entries = [
        {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": s}
        for c, s in ADDED_TOKENS
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": FIRST_ADDED_ID + i,
                **{k: e[k] for k in ("content", "single_word", "lstrip", "rstrip")},
                "normalized": False,
                "special": e["special"],
            }
            for i, e in enumerate(token_entries)
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": PRETOKENIZE_REGEX}, "behavior": "Isolated", "invert": False},
                byte_level,
            ],
        },
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [f"{a} {b}" for a, b in merges],
        },
    }
    names = [c for c, _ in ADDED_TOKENS]
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(FIRST_ADDED_ID + i): e for i, e in enumerate(token_entries)},
        "additional_special_tokens": names[1:14],
        "bos_token": None,
        "chat_template": QWEN25_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }

    def dumps(value, **kwargs) -> bytes:
        return json.dumps(value, ensure_ascii=False, **kwargs).encode("utf-8")

    return {
        "vocab.json": dumps(vocab, separators=(",", ":")),
        "merges.txt": ("\n".join(f"{a} {b}" for a, b in merges) + "\n").encode("utf-8"),
        "tokenizer.json": dumps(tokenizer, indent=2),
        "tokenizer_config.json": dumps(config, indent=2),
    }


def build_qwen_tokenizer(out_dir: str, source: str | None = None) -> str:
    """Write Qwen2.5's tokenizer to ``out_dir`` (from ``source``, a qwen.tiktoken, or the
    installed dashscope package's); returns ``out_dir``."""
    vocab, merges = vocab_and_merges(read_ranks(source or tiktoken_path()))
    if len(vocab) != N_RANKS or len(merges) != N_MERGES:
        raise TokenizerSourceError(f"{len(vocab)} tokens and {len(merges)} merges, not {N_RANKS} and {N_MERGES}")
    files = tokenizer_files(vocab, merges)
    for name, (digest, size) in PUBLISHED.items():
        if hashlib.sha256(files[name]).hexdigest() != digest or len(files[name]) != size:
            raise TokenizerSourceError(f"the built {name} differs from the one published with Qwen2.5")
    os.makedirs(out_dir, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(out_dir, name + ".tmp"), "wb") as f:
            f.write(data)
        os.replace(os.path.join(out_dir, name + ".tmp"), os.path.join(out_dir, name))
    return out_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Build Qwen2.5's tokenizer from its published BPE ranks.")
    parser.add_argument("out_dir")
    parser.add_argument("--tiktoken", default=None, help="a qwen.tiktoken file (default: the dashscope package's)")
    args = parser.parse_args(argv)
    try:
        build_qwen_tokenizer(args.out_dir, args.tiktoken)
    except (TokenizerSourceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote Qwen2.5's tokenizer to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
