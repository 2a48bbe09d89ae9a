"""Packed oneDNN linear layers for CPU inference: the same numbers as nn.Linear, new
weights used as soon as they are written, training untouched; and the oneDNN kernel
with the packed weight is what actually runs."""

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from afm_trainer.models.cpu_linear import PackedLinear, onednn_available, pack_linear_layers

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")


def _model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@needs_onednn
def test_packed_layers_give_the_logits_of_plain_ones(nano_model, tmp_path):
    trained = _model(nano_model)
    with torch.no_grad():  # a fresh model's biases are zeros: give every parameter a value
        for parameter in trained.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    trained.save_pretrained(tmp_path)
    plain, packed = _model(tmp_path), pack_linear_layers(_model(tmp_path))
    assert isinstance(packed.lm_head, PackedLinear) and isinstance(packed.model.layers[0].mlp.down_proj, PackedLinear)
    ids = torch.randint(0, 400, (3, 17))
    with torch.no_grad():
        expected, got = plain(input_ids=ids).logits, packed(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_weights_written_after_packing_are_used_at_once(nano_model):
    # the rollout's weight sync: load_state_dict writes into the parameters the layers packed
    packed = pack_linear_layers(_model(nano_model))
    ids = torch.randint(0, 400, (2, 9))
    with torch.no_grad():
        before = packed(input_ids=ids).logits
        trained = _model(nano_model)
        for parameter in trained.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        packed.load_state_dict(trained.state_dict())
        after, expected = packed(input_ids=ids).logits, trained(input_ids=ids).logits
    assert not torch.allclose(after, before, atol=1e-3)
    assert torch.allclose(after, expected, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_training_through_packed_layers_gets_the_plain_gradients(nano_model):
    plain, packed = _model(nano_model), pack_linear_layers(_model(nano_model))
    ids = torch.randint(0, 400, (2, 9))
    for model in (plain, packed):
        model(input_ids=ids, labels=ids).loss.backward()
    for (name, p), q in zip(plain.named_parameters(), packed.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


def test_without_onednn_the_layers_stay_plain(nano_model, monkeypatch):
    import afm_trainer.models.cpu_linear as cpu_linear

    monkeypatch.setattr(cpu_linear, "onednn_available", lambda: False)
    model = cpu_linear.pack_linear_layers(_model(nano_model))
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


class _DispatchedOps(TorchDispatchMode):
    """Counts the kernels actually dispatched (below autograd), by name, and whether each
    oneDNN linear got its weight packed (a tensor in oneDNN's own layout): what ran, not
    how long it took."""

    def __init__(self):
        super().__init__()
        self.counts, self.packed_weights = Counter(), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        if func is torch.ops.mkldnn._linear_pointwise.default:
            self.packed_weights.append(args[1].is_mkldnn)
        return func(*args, **(kwargs or {}))


# This build's own capabilities, not the module's onednn_available(): a module that wrongly
# believes oneDNN missing must fail here, not skip.
torch_has_onednn_linear = pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")),
    reason="this PyTorch build has no oneDNN linear",
)


@torch_has_onednn_linear
def test_decoding_multiplies_through_onednn_with_each_weight_packed_once_until_it_changes(nano_model):
    from afm_trainer.models.decoding import Request, decode_batch, load_decoding_model

    model = load_decoding_model(nano_model)  # as the rollout loads it
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    assert len(linears) > 10 and all(isinstance(module, PackedLinear) for module in linears)

    def decode():
        requests = [Request([5, 6, 7], max_tokens=4, temperature=0.0), Request([8, 9], max_tokens=6, temperature=0.0)]
        with _DispatchedOps() as ops:
            decode_batch(model, requests)
        forwards = ops.counts["aten.embedding.default"]  # one token embedding per model call
        assert forwards >= 6
        assert ops.counts["mkldnn._linear_pointwise.default"] == len(linears) * forwards  # every layer, every call
        assert all(ops.packed_weights)
        assert ops.counts["aten.mm.default"] == ops.counts["aten.addmm.default"] == 0  # no MKL sgemm
        return ops.counts["mkldnn._reorder_linear_weight.default"]

    assert decode() == len(linears)  # packed on first use
    assert decode() == 0  # and kept
    with torch.no_grad():  # the rollout's weight sync writes into the packed parameters
        model.load_state_dict({name: 1.01 * value for name, value in model.state_dict().items()})
    assert decode() == len(linears)  # packed again, once
