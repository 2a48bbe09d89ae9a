"""The evaluation's loss scores the tokens training trains, no more."""

import pandas as pd
import pytest
import torch

from afm_trainer.data.sft_dataset import AgentSFTDataset
from afm_trainer.eval.lm import _prompt_and_full_ids, assistant_loss


def test_assistant_loss_scores_exactly_the_tokens_the_sft_dataset_trains(tmp_path, nano_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(nano_model)
    conversation = [
        {"role": "user", "content": "FizzBuzz of 10?"},
        {"role": "assistant", "content": "<|planner|>Plan.\n<|coder|>def solve(n):\n    return n\n"},
    ]
    pd.DataFrame({"messages": [[{**m, "train": m["role"] == "assistant"} for m in conversation]]}).to_parquet(
        tmp_path / "c.parquet"
    )
    config = {"pad_mode": "no_padding", "truncation": "right", "max_length": 512, "messages_key": "messages"}
    item = AgentSFTDataset(str(tmp_path / "c.parquet"), tokenizer, config)[0]
    prompt, full = _prompt_and_full_ids(tokenizer, conversation)
    assert full == item["input_ids"].tolist()[: len(full)]
    trained = item["loss_mask"].nonzero().flatten().tolist()
    assert list(range(len(prompt), len(full))) == trained  # the turn and its end-of-turn token, not the newline after

    model = AutoModelForCausalLM.from_pretrained(nano_model).eval()
    logits = model(input_ids=torch.tensor([full])).logits[0, :-1].float()
    direct = torch.nn.functional.cross_entropy(logits[len(prompt) - 1 :], torch.tensor(full[len(prompt) :]))
    assert assistant_loss(model, tokenizer, [conversation]) == pytest.approx(direct.item(), rel=1e-5)


def test_a_bf16_export_is_evaluated_in_float32_with_the_rollouts_attention(tmp_path, nano_model):
    # verl exports checkpoints in bf16; CPUs without bf16 matrix units multiply it several times slower
    from transformers import AutoModelForCausalLM

    from afm_trainer.eval.lm import load_model
    from afm_trainer.models.attention import NAME

    AutoModelForCausalLM.from_pretrained(nano_model, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model = load_model(str(tmp_path / "bf16"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.config._attn_implementation == NAME and not model.training
