"""The memory plan (afm_trainer/models/memory_plan.py, scripts/plan_memory.py): parameter
counts against real models, the terms' arithmetic against the recipes' composed configs,
and the activation formula against what autograd really saves."""

import json
import os
import runpy

import pytest
import torch

from afm_trainer.models.memory_plan import (
    GIB,
    ModelShape,
    PlanError,
    format_plan,
    layer_activation_bytes,
    lora_parameters,
    lora_targets,
    other_activation_bytes,
    parameter_counts,
    plan,
)
from afm_trainer.models.real_shape import ARCHS

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "plan_memory.py")
CPU = ["device=cpu"]
TINY = {
    "model_type": "qwen2",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 176,
    "vocab_size": 512,
    "tie_word_embeddings": True,
}


def build(config: dict):
    """The transformers model of an HF config dict, on the meta device (no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        {**TINY, "tie_word_embeddings": False},
        {**TINY, "model_type": "llama", "attention_bias": True, "mlp_bias": True},
        {**TINY, "model_type": "qwen3", "head_dim": 32, "tie_word_embeddings": False},
    ],
    ids=["qwen2-tied", "qwen2-untied", "llama-biases", "qwen3-head_dim"],
)
def test_parameter_count_is_the_built_models(config):
    model = build(config)
    assert parameter_counts(ModelShape.from_hf_config(config))["total"] == sum(p.numel() for p in model.parameters())


def test_parameter_count_of_the_published_qwen25_shapes():
    published = {"qwen2.5-0.5b": 494_032_768, "qwen2.5-1.5b": 1_543_714_304, "qwen2.5-7b": 7_615_616_512}
    for arch, count in published.items():
        assert parameter_counts(ModelShape.from_hf_config(ARCHS[arch]))["total"] == count


def test_lora_count_is_peft_s():
    from peft import LoraConfig, TaskType, get_peft_model

    model = get_peft_model(
        build(TINY), LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, target_modules="all-linear", bias="none")
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_parameters(ModelShape.from_hf_config(TINY), 4, lora_targets("all-linear")) == trainable
    assert lora_targets(["q_proj", "v_proj"]) == ("q_proj", "v_proj")
    assert lora_targets("all-linear", exclude_modules=["down_proj"])[-1] == "up_proj"


def _saved_bytes_per_token(config: dict, tokens: int, checkpointing: bool = False, lora_rank: int = 0) -> float:
    """What autograd saves for a packed forward (two samples in one row), per token."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import afm_trainer.models.attention  # noqa: F401  (registers sdpa_varlen)

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config, attn_implementation="sdpa_varlen"))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_rank:  # as verl's _build_lora_module
        from peft import LoraConfig, TaskType, get_peft_model

        model.enable_input_require_grads()
        lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=lora_rank, target_modules="all-linear", bias="none")
        model = get_peft_model(model, lora)
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    half = tokens // 2
    positions = torch.cat([torch.arange(half), torch.arange(tokens - half)])[None]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=torch.randint(0, config["vocab_size"], (1, tokens)), position_ids=positions, use_cache=False)
    return sum(saved.values()) / tokens


def test_activation_formula_matches_what_autograd_saves():
    shape = ModelShape.from_hf_config(TINY)
    layer, other = layer_activation_bytes(shape, 4, "sdpa_varlen"), other_activation_bytes(shape, 4)
    measured = _saved_bytes_per_token(TINY, 128)
    assert measured == pytest.approx(shape.layers * layer + other, rel=0.01)
    # LoRA: frozen norms and LM head save less, each adapter its r-wide middle
    layer = layer_activation_bytes(shape, 4, "sdpa_varlen", trainable_norms=False, lora_rank=4)
    measured = _saved_bytes_per_token(TINY, 128, lora_rank=4)
    assert measured == pytest.approx(shape.layers * layer + other_activation_bytes(shape, 4, False), rel=0.01)
    # checkpointing: the layers' inputs, and RoPE's cos/sin become the checkpoint's inputs
    # (held by it, not saved through autograd's hooks)
    measured = _saved_bytes_per_token(TINY, 128, checkpointing=True)
    rope = 2 * 4 * shape.head_dim
    assert measured == pytest.approx(shape.layers * 4 * shape.hidden + other - rope, rel=0.01)


def _vocab_sized_backward_outputs(config: dict) -> list[tuple[str, int]]:
    """(op, bytes) of every (vocab x hidden) tensor the backward makes besides .grad's first."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    loss = model(input_ids=torch.randint(0, config["vocab_size"], (1, 64))).logits.logsumexp(-1).sum()
    made, seen = [], {p.untyped_storage().data_ptr() for p in model.parameters()}

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            matrix = isinstance(out, torch.Tensor) and out.shape == (config["vocab_size"], config["hidden_size"])
            view = func._schema.returns[0].alias_info is not None  # t(), view(): no new memory
            if matrix and not view and out.untyped_storage().data_ptr() not in seen:
                seen.add(out.untyped_storage().data_ptr())
                made.append((func.__name__, out.untyped_storage().nbytes()))
            return out

    with Watch():
        loss.backward()
    return made


def test_tied_embeddings_cost_two_more_matrices_in_the_backward():
    """What the plan's tied-embedding term counts, as torch's backward makes it: the LM
    head's gradient (the root's unsharded gradient), then the embedding's dense gradient
    and their out-of-place sum."""
    matrix = TINY["vocab_size"] * TINY["hidden_size"] * 4
    made = _vocab_sized_backward_outputs(TINY)
    assert [op.split(".")[0] for op, _ in made] == ["mm", "embedding_dense_backward", "add"]
    assert all(nbytes == matrix for _, nbytes in made)
    tied = plan(ModelShape.from_hf_config(TINY), "sft", overrides=CPU)["by_key"]["tied_embedding_grads"]
    assert tied["bytes"] == 2 * matrix and "train" in tied["phases"]
    untied = plan(ModelShape.from_hf_config({**TINY, "tie_word_embeddings": False}), "sft", overrides=CPU)
    assert "tied_embedding_grads" not in untied["by_key"]
    lora = plan(ModelShape.from_hf_config(TINY), "sft", overrides=[*CPU, "model.lora_rank=4"])
    assert "tied_embedding_grads" not in lora["by_key"]


@pytest.fixture(scope="module")
def sft_plan():
    return plan("qwen2.5-0.5b", "sft", nproc=2, overrides=CPU)


def test_sft_plan_on_cpu_reads_the_composed_config(sft_plan):
    s, k = sft_plan["settings"], sft_plan["by_key"]
    assert (s["model_dtype"], s["param_dtype"], s["gradient_checkpointing"]) == ("fp32", "fp32", False)
    assert s["micro_batch_tokens"] == 2048 and s["attn_implementation"] == "sdpa_varlen"
    assert k["logits"]["bytes"] == 2048 * 151_936 * 4  # tokens x vocab x 4, exactly
    assert k["loss_logit_copies"]["bytes"] == 2 * k["logits"]["bytes"]
    assert k["optimizer"]["bytes"] == 2 * 4 * 494_032_768 // 2
    assert (
        sft_plan["total_bytes"]
        == sft_plan["phase_bytes"]["train"]
        == sum(t["bytes"] for t in sft_plan["terms"] if "train" in t["phases"])
    )


def test_sharding_divides_by_the_world_size(sft_plan):
    eight = plan("qwen2.5-0.5b", "sft", nproc=4, nnodes=2, overrides=CPU)
    for key in ("weights", "gradients", "optimizer"):
        assert eight["by_key"][key]["bytes"] * 4 == sft_plan["by_key"][key]["bytes"]
    for key in ("activations", "logits", "fsdp_gathered"):  # per rank, not sharded
        assert eight["by_key"][key]["bytes"] == sft_plan["by_key"][key]["bytes"]


def test_a_doubled_token_budget_doubles_activations_and_logits(sft_plan):
    doubled = plan("qwen2.5-0.5b", "sft", nproc=2, overrides=[*CPU, "data.max_token_len_per_gpu=4096"])
    assert doubled["settings"]["micro_batch_tokens"] == 4096
    for key in ("activations", "logits", "loss_logit_copies"):
        assert doubled["by_key"][key]["bytes"] == 2 * sft_plan["by_key"][key]["bytes"]
    assert doubled["by_key"]["weights"] == sft_plan["by_key"]["weights"]
    # checkpointing keeps only each layer's input
    checkpointed = plan("qwen2.5-0.5b", "sft", nproc=2, overrides=[*CPU, "model.enable_gradient_checkpointing=true"])
    assert checkpointed["by_key"]["activations"]["bytes"] < sft_plan["by_key"]["activations"]["bytes"] / 10


def test_lora_makes_gradients_and_optimizer_small(sft_plan):
    lora = plan("qwen2.5-0.5b", "sft", nproc=2, overrides=[*CPU, "model.lora_rank=16"])
    adapters = lora["settings"]["trainable"]
    assert adapters == lora_parameters(ModelShape.from_hf_config(ARCHS["qwen2.5-0.5b"]), 16, lora_targets("all-linear"))
    assert lora["by_key"]["gradients"]["bytes"] == adapters * 4 // 2
    assert lora["by_key"]["optimizer"]["bytes"] == adapters * 8 // 2
    for key in ("gradients", "optimizer"):
        assert lora["by_key"][key]["bytes"] < sft_plan["by_key"][key]["bytes"] / 50
    assert lora["total_bytes"] < sft_plan["total_bytes"]


def test_the_other_recipes():
    dpo = plan("qwen2.5-0.5b", "dpo", nproc=2, overrides=CPU, pairs=1000)
    assert dpo["settings"]["micro_batch_tokens"] == 8192  # dpo.yaml's budget, after the device's
    assert dpo["by_key"]["dpo_reference_logps"]["bytes"] == 1000 * 2 * 4
    assert "reference" in dpo["phase_bytes"]

    distill = plan("qwen2.5-0.5b", "distill", nproc=2, overrides=CPU, topk=16)
    assert distill["by_key"]["distill_teacher_topk"]["bytes"] == 2048 * 16 * 12
    assert distill["total_bytes"] > plan("qwen2.5-0.5b", "sft", nproc=2, overrides=CPU)["total_bytes"]

    grpo = plan("qwen2.5-0.5b", "grpo", nproc=2, overrides=[*CPU, "actor_rollout_ref.rollout.n=8"])
    shape = ModelShape.from_hf_config(ARCHS["qwen2.5-0.5b"])
    kv = shape.layers * 2 * shape.kv_heads * shape.head_dim * (16 * 8 * (256 + 256)) * 4  # fp32 hf rollout
    assert grpo["by_key"]["rollout_kv_cache"]["bytes"] == kv // 2
    assert grpo["by_key"]["logits"]["bytes"] == 8 * 512 * shape.vocab * 4  # ppo_micro_batch_size_per_gpu x seq
    assert {"rollout", "logprob", "train", "step"} <= set(grpo["phase_bytes"])
    assert "ref_weights" in grpo["by_key"]


def test_a_model_folder_and_bad_input(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    result = plan(str(tmp_path), "sft", overrides=CPU)
    assert result["model"]["parameters"] == parameter_counts(ModelShape.from_hf_config(TINY))["total"]
    assert result["total_bytes"] == plan(str(tmp_path / "config.json"), "sft", overrides=CPU)["total_bytes"]
    with pytest.raises(PlanError, match="does not exist"):
        plan(str(tmp_path / "nope"), "sft", overrides=CPU)
    with pytest.raises(PlanError, match="does not compose"):
        plan(str(tmp_path), "sft", overrides=[*CPU, "data.no_such_key=1"])


def test_the_cli_prints_the_table_and_one_error_line(tmp_path, capsys):
    main = runpy.run_path(SCRIPT)["main"]
    assert main(["--model", "qwen2.5-0.5b", "--recipe", "sft", "--nproc", "2", *CPU]) == 0
    out = capsys.readouterr().out
    for row in ("weights (FSDP shard)", "gradients", "optimizer state (AdamW)", "FSDP all-gathered", "activations"):
        assert row in out
    assert "logits" in out and "total per rank" in out and "fp32" in out
    assert main(["--model", str(tmp_path / "missing"), "--recipe", "sft", *CPU]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing" in lines[0]
    assert captured.out == ""


def test_format_plan_lists_every_term_in_gib(sft_plan):
    text = format_plan(sft_plan)
    for term in sft_plan["terms"]:
        assert term["label"] in text and f"{term['bytes'] / GIB:.3f}" in text
