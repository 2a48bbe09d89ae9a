"""A real architecture's shape built here: Qwen2.5-0.5B's width, heads and vocabulary."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from afm_trainer.models.real_shape import build_real_shape_model, main, model_config


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "qwen2.5-0.5b-1layer"
    assert main(["--out", str(out), "--arch", "qwen2.5-0.5b", "--layers", "1"]) == 0
    return out


def test_the_model_has_qwen25_05bs_shape_and_tokenizer(one_layer):
    model = AutoModelForCausalLM.from_pretrained(one_layer)
    tokenizer = AutoTokenizer.from_pretrained(one_layer)
    config = model.config
    shape = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.intermediate_size)
    assert shape == (896, 14, 2, 4864) and config.num_hidden_layers == 1
    assert model.get_input_embeddings().weight.shape == (151936, 896)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # tied
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (2 * 64, 896)  # 2 KV heads of 64
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    ids = torch.tensor([tokenizer(text).input_ids])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 151936) and torch.isfinite(logits).all()
    assert model.generation_config.eos_token_id == [151645, 151643]


def test_a_config_file_and_a_bad_arch_or_depth(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                **model_config("qwen2.5-0.5b"),
                "hidden_size": 128,
                "intermediate_size": 256,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
            }
        )
    )
    config = model_config(config_file=str(path), layers=2)
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (128, 2, 151936)
    model, _ = build_real_shape_model(str(tmp_path / "m"), config, dtype="float32")
    assert sum(p.numel() for p in model.parameters()) > 151936 * 128
    with pytest.raises(ValueError, match="unknown arch 'llama-9b'"):
        model_config("llama-9b")
    with pytest.raises(ValueError, match="--layers must be 1 or more"):
        model_config("qwen2.5-0.5b", layers=0)
    small_vocab = {**config, "vocab_size": 4096}
    with pytest.raises(ValueError, match="smaller than the tokenizer's 151665"):
        build_real_shape_model(str(tmp_path / "v"), small_vocab)


def test_role_and_trace_tokens_on_the_real_tokenizer_take_padding_rows_set_to_the_mean(one_layer, tmp_path):
    from afm_trainer.models import special_tokens
    from afm_trainer.models.special_tokens import PROJECT_TOKENS

    out = tmp_path / "with_tokens"
    assert special_tokens.main(["--model", str(one_layer), "--out", str(out)]) == 0
    before = AutoModelForCausalLM.from_pretrained(one_layer)
    after = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in PROJECT_TOKENS]
    assert ids == list(range(151665, 151665 + len(PROJECT_TOKENS))) and len(tokenizer) == 151678
    rows = after.get_input_embeddings().weight
    assert rows.shape == (151936, 896)  # Qwen's padding had room: nothing resized
    mean = before.get_input_embeddings().weight[:151665].float().mean(0)
    assert torch.allclose(rows[ids].float(), mean.expand(len(ids), -1), atol=1e-2)
    assert torch.equal(rows[:151665], before.get_input_embeddings().weight[:151665])
    assert after.lm_head.weight.data_ptr() == rows.data_ptr()
    # The template renders a role token given as a message's text as that one token.
    text = tokenizer.apply_chat_template([{"role": "assistant", "content": "<|planner|>plan"}], tokenize=False)
    assert 151665 in tokenizer(text).input_ids
    # Text without the new tokens decodes as before.
    for prompt in ["Hello world", "def add(a, b):", "Who wrote Carmen?"]:
        encoded = torch.tensor([tokenizer(prompt).input_ids])
        outputs = [m.generate(encoded, max_new_tokens=6, do_sample=False) for m in (before, after)]
        assert torch.equal(*outputs), prompt
