"""Build a tiny Qwen2-architecture causal LM and its tokenizer, offline, in seconds.

    python -m afm_trainer.models.tiny --out DIR [--size tiny] [--vocab_size 4096] [--seed 0]

Nothing can be downloaded on the machines this project is tested on, so the whole
pipeline runs on a model it builds itself: random weights, a byte-level BPE tokenizer
trained here with `tokenizers`, a ChatML chat template, digits split one per token
(arithmetic stays learnable), and the project's role and trace tokens as single tokens.
The folder it writes loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` and with
verl, under ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
from dataclasses import asdict, dataclass

from afm_trainer.models.special_tokens import CONTROL_TOKENS, END_OF_TEXT, IM_END, add_project_tokens

# ChatML, the template of Qwen2 instruct models, without a default system prompt, and
# Qwen2.5's rendering of tools: the function schemas in a ``<tools>`` block of the system
# turn, an assistant's calls as ``\n<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>``
# after its content. Unlike Qwen2.5, a ``tool`` message stays its own ``tool`` turn (Qwen2.5
# merges consecutive results into one user turn): every message then renders on its own
# exactly as inside the conversation, which verl's per-message tokenisation needs, and
# tool output is visibly not the model's speech. A conversation without tools renders as
# plain ChatML.
TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_POSTAMBLE = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>"
)
CHATML_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\n\n' }}{%- endif %}"
    "{{- " + repr(TOOLS_PREAMBLE) + " }}"
    "{%- for tool in tools %}{{- '\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- " + repr(TOOLS_POSTAMBLE + "<|im_end|>\n") + " }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (tools and loop.first and message['role'] == 'system') %}"
    "{%- set calls = message['tool_calls'] if message['tool_calls'] is defined and message['tool_calls'] else [] %}"
    "{{- '<|im_start|>' + message['role'] }}"
    "{%- if message['content'] or not calls %}{{- '\n' + (message['content'] or '') }}{%- endif %}"
    "{%- for call in calls %}"
    "{%- set call = call['function'] if call['function'] is defined else call %}"
    "{{- '\n<tool_call>\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' + (call['arguments'] | tojson) + '}\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class TinySize:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int


SIZES = {
    # For unit tests: builds and steps in a blink (~0.4M parameters with a 4k vocabulary).
    "nano": TinySize(64, 2, 4, 2, 256),
    # The default: a few million parameters, learns the demo world's easy tiers on CPU.
    "tiny": TinySize(256, 4, 8, 4, 768),
    # For longer CPU runs or a first GPU check (~20M parameters).
    "small": TinySize(512, 6, 8, 4, 1536),
}


def _tokenizer_corpus(seed: int, n_synthetic: int = 4000) -> list[str]:
    """Text to train the BPE on: Python stdlib source (English prose in docstrings, code)
    plus synthetic lines shaped like the project's traces. Deterministic for a given
    Python version and seed."""
    import argparse as m1
    import collections as m2
    import json as m3
    import textwrap as m4

    texts = [inspect.getsource(m) for m in (m1, m2, m3, m4)]
    rng = random.Random(seed)
    words = (
        "the a of to and in is was for on that with as by question answer search result reasoning plan code review "
        "test pass fail true false yes no"
    ).split()
    for _ in range(n_synthetic):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
        number = rng.randint(0, 10**6)
        texts.append(f"{sentence.capitalize()}. {number} + {rng.randint(0, 999)} = ?")
    return texts


def build_tokenizer(vocab_size: int = 4096, seed: int = 0, corpus: list[str] | None = None):
    """Train a byte-level BPE tokenizer and wrap it as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Digits are split before the byte-level step, so "1234" is always 4 tokens.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=CONTROL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus if corpus is not None else _tokenizer_corpus(seed), trainer=trainer)

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        unk_token=None,
        bos_token=None,
        model_max_length=4096,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHATML_TEMPLATE
    add_project_tokens(hf_tok)
    return hf_tok


def build_tiny_model(
    out_dir: str,
    size: str = "tiny",
    vocab_size: int = 4096,
    seed: int = 0,
    corpus_file: str | None = None,
    domain_file: str | None = None,
):
    """Write a tokenizer and a randomly initialised Qwen2 model to ``out_dir``.

    ``corpus_file`` replaces the tokenizer's training text; ``domain_file`` adds to it
    (weighted 5x), so the domain's words -- the demo world's names -- become single
    tokens: a name the model copies from a search result is then one token, not four.

    The model is saved with its final embedding size (tokenizer length rounded up to a
    multiple of 64, which keeps matmuls aligned) and in float32, the dtype verl's FSDP
    engine trains in by default.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    corpus = None
    if corpus_file:
        with open(corpus_file, encoding="utf-8") as f:
            corpus = f.read().splitlines()
    if domain_file:
        with open(domain_file, encoding="utf-8") as f:
            corpus = (corpus if corpus is not None else _tokenizer_corpus(seed)) + f.read().splitlines() * 5
    tokenizer = build_tokenizer(vocab_size=vocab_size, seed=seed, corpus=corpus)

    dims = SIZES[size]
    config = Qwen2Config(
        vocab_size=(len(tokenizer) + 63) // 64 * 64,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **asdict(dims),
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=64
    )

    # Write to a temporary folder and rename it into place: a crash never leaves a
    # half-written model where a later run would take it for a complete one.
    tmp_dir = out_dir.rstrip("/") + ".tmp"
    if os.path.exists(tmp_dir):
        import shutil

        shutil.rmtree(tmp_dir)
    model.save_pretrained(tmp_dir)
    tokenizer.save_pretrained(tmp_dir)
    with open(os.path.join(tmp_dir, "afm_tiny.json"), "w") as f:
        json.dump({"size": size, "vocab_size": vocab_size, "seed": seed, **asdict(dims)}, f, indent=2)
    if os.path.exists(out_dir):
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp_dir, out_dir)
    return model, tokenizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write the model and tokenizer to")
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES), help="model dimensions (default: tiny)")
    parser.add_argument("--vocab_size", type=int, default=4096, help="BPE vocabulary size before added tokens")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and tokenizer corpus")
    parser.add_argument("--corpus", default=None, help="optional text file (one document a line) to train the BPE on")
    parser.add_argument(
        "--domain", default=None, help="optional text file added to the BPE's text (5x): its words become tokens"
    )
    args = parser.parse_args(argv)
    model, tokenizer = build_tiny_model(args.out, args.size, args.vocab_size, args.seed, args.corpus, args.domain)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: Qwen2 {args.size}, {n_params / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}")


if __name__ == "__main__":
    main()
