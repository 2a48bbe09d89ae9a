"""The CPU engine's training step: weights gathered once per step, the same model as verl's."""

import json
import socket

import pytest

from tests.conftest import fresh_python

# One rank of FSDP2 over gloo in a fresh interpreter (a process group is once per process).
# Three micro-batches through the engine's gradient-sync context, as verl's
# forward_backward_batch runs them, then AdamW, then a forward-only pass.
STEP = r"""
import copy, json, sys, types
import torch, torch.distributed as dist
import verl  # noqa: F401  (loads the CPU platform and engines)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from transformers import Qwen2Config, Qwen2ForCausalLM
from verl.utils.fsdp_utils import apply_fsdp2
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from afm_trainer.verl_ext.cpu_engine import CPUFSDPEngineWithLMHead

engine_cls = {"cpu": CPUFSDPEngineWithLMHead, "verl": FSDPEngineWithLMHead}[sys.argv[1]]
fail_at = int(sys.argv[2])  # a micro-batch whose backward raises, or -1
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[3], rank=0, world_size=1)
torch.manual_seed(0)
config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
model = Qwen2ForCausalLM(config)
reference = copy.deepcopy(model)  # plain PyTorch, no FSDP
apply_fsdp2(model, {"mesh": init_device_mesh("cpu", (1,)), "reshard_after_forward": True}, {})
engine = object.__new__(engine_cls)  # the engine's step logic, without loading a checkpoint
engine.module = model
engine.engine_config = types.SimpleNamespace(reshard_after_forward=True, use_no_sync_for_gradient_accumulation=True)
batches = [torch.randint(0, 64, (1, n)) for n in (9, 14, 11)]

def sharded():
    return all(isinstance(p, DTensor) for p in model.parameters())

between, failed = [], False
for i, batch in enumerate(batches):
    try:
        with engine._gradient_sync_context(is_last_micro_batch=i == len(batches) - 1):
            loss = model(input_ids=batch, labels=batch).loss / len(batches)
            if i == fail_at:
                raise RuntimeError("a micro-batch failed")
            loss.backward()
    except RuntimeError:
        failed = True
        break
    between.append(sharded())
result = {"sharded_between_micro_batches": between[:-1], "sharded_after_step": sharded(), "failed": failed}
if not failed:
    for batch in batches:
        (reference(input_ids=batch, labels=batch).loss / len(batches)).backward()
    for m in (model, reference):
        torch.optim.AdamW(m.parameters(), lr=1e-2).step()
    probe = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        result["max_logit_difference"] = (model(input_ids=probe).logits - reference(input_ids=probe).logits).abs().max().item()
dist.destroy_process_group()
print(json.dumps(result))
"""


def _step(engine: str, fail_at: int = -1) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = fresh_python(STEP, engine, str(fail_at), str(port))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_verl_engine_registry_resolves_the_cpu_engines():
    code = (
        "from verl.utils.device import get_device_name; get_device_name();"
        "from verl.workers.engine import EngineRegistry;"
        "print(*(EngineRegistry.get_engine_cls(kind, 'fsdp2').__name__ for kind in ('language_model', 'value_model')))"
    )
    result = fresh_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["CPUFSDPEngineWithLMHead", "CPUFSDPEngineWithValueHead"]


@pytest.mark.parametrize("engine", ["cpu", "verl"])
def test_a_step_trains_the_same_model_as_plain_pytorch(engine):
    result = _step(engine)
    # The optimizer steps the sharded weights: a forward after it must see them, not a stale gathered copy.
    assert result["sharded_after_step"]
    assert result["max_logit_difference"] < 1e-5
    if engine == "cpu":  # the weights stay gathered from the first forward to the last backward
        assert result["sharded_between_micro_batches"] == [False, False]
    else:  # verl's engine gathers and frees them around each micro-batch
        assert result["sharded_between_micro_batches"] == [True, True]


def test_a_failed_micro_batch_leaves_the_weights_sharded():
    result = _step("cpu", fail_at=1)
    assert result["failed"] and result["sharded_after_step"]
