"""Packed oneDNN linear layers for CPU inference: the same numbers as nn.Linear, new
weights used as soon as they are written, training untouched."""

import pytest
import torch

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
