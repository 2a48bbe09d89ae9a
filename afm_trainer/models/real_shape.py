"""Models of a real architecture's shape, randomly initialised, built here (no model hub).

    python -m afm_trainer.models.real_shape --out DIR [--arch qwen2.5-0.5b] [--layers N]
    python -m afm_trainer.models.real_shape --out DIR --config path/to/config.json

A published model's config (``--arch``: Qwen2.5 0.5B, 1.5B or 7B, their numbers copied
from the configs Qwen publishes) or any HF config file (``--config``), with random
weights and Qwen2.5's tokenizer built from its published BPE ranks
(``afm_trainer.models.qwen_tokenizer``). What runs on it exercises everything a real
model's shape changes: a 151,936-row embedding and LM head, 14 query heads sharing 2 KV
heads, the chat template with tools, gigabytes of weights. ``--layers N`` keeps the width
and vocabulary and cuts the depth, for smoke runs that must fit a small machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

from afm_trainer.models.qwen_tokenizer import VOCAB_SIZE, build_qwen_tokenizer

_QWEN25 = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_act": "silu",
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "use_cache": True,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "max_window_layers": 21,
    "max_position_embeddings": 32768,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vocab_size": VOCAB_SIZE,
}
ARCHS = {
    "qwen2.5-0.5b": {
        **_QWEN25,
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "tie_word_embeddings": True,
    },
    "qwen2.5-1.5b": {
        **_QWEN25,
        "hidden_size": 1536,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "intermediate_size": 8960,
        "tie_word_embeddings": True,
    },
    "qwen2.5-7b": {
        **_QWEN25,
        "hidden_size": 3584,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "intermediate_size": 18944,
        "tie_word_embeddings": False,
        "vocab_size": 152064,
        "max_window_layers": 28,
    },
}


def model_config(arch: str | None = None, config_file: str | None = None, layers: int | None = None) -> dict:
    """The config of ``arch`` or of ``config_file`` (an HF config.json), ``layers`` deep if given."""
    if config_file:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
    elif arch in ARCHS:
        config = dict(ARCHS[arch])
    else:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)} or give --config")
    if layers is not None:
        if layers < 1:
            raise ValueError(f"--layers must be 1 or more, got {layers}")
        config["num_hidden_layers"] = layers
        config["max_window_layers"] = min(config.get("max_window_layers", layers), layers)
    return config


def build_real_shape_model(out_dir: str, config: dict, seed: int = 0, dtype: str = "bfloat16"):
    """Write a randomly initialised model of ``config`` and Qwen2.5's tokenizer to ``out_dir``
    (built in a temporary folder and renamed into place)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tmp_dir = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(build_qwen_tokenizer(tmp_dir))
    if config.get("vocab_size", 0) < len(tokenizer):
        raise ValueError(f"vocab_size {config.get('vocab_size')} is smaller than the tokenizer's {len(tokenizer)}")
    hf_config = AutoConfig.for_model(**config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(tmp_dir)
    with open(os.path.join(tmp_dir, "afm_real_shape.json"), "w") as f:
        json.dump({"seed": seed, "dtype": dtype, "weights": "random"}, f, indent=2)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp_dir, out_dir)
    return model, tokenizer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write the model and tokenizer to")
    parser.add_argument("--arch", default="qwen2.5-0.5b", help=f"a published shape: {', '.join(ARCHS)}")
    parser.add_argument("--config", default=None, help="an HF config.json instead of --arch")
    parser.add_argument("--layers", type=int, default=None, help="this many layers (default: the config's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weights as saved")
    args = parser.parse_args(argv)
    try:
        config = model_config(args.arch, args.config, args.layers)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    model, tokenizer = build_real_shape_model(args.out, config, args.seed, args.dtype)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {config['model_type']} {n_params / 1e6:.0f}M parameters, vocabulary {len(tokenizer)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
