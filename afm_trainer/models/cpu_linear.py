"""Linear layers that multiply with oneDNN and a weight packed once, for inference on CPU.

PyTorch's CPU ``F.linear`` calls MKL's sgemm, which lays the weight out for its kernel
again on every call; at decoding's shapes (a few dozen to a few hundred rows against a
weight of thousands of columns, the LM head above all) that work is a large share of
the product. oneDNN can keep the weight in its kernel's layout (the packing PyTorch's
own compiler does for CPU inference), so each step only multiplies.

``pack_linear_layers(model)`` turns a model's ``nn.Linear`` layers into ``PackedLinear``
in place. A layer packs its weight when first used and again whenever the weight changes
(a weight sync's ``load_state_dict`` writes into it, which bumps its version), so nobody
has to remember to repack. The packed copy sits beside the weight, so an inference
model's linear weights take twice their memory. Anything that is not fp32 inference on
CPU (training with autograd, bf16, GPU tensors) takes ``F.linear`` as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def onednn_available() -> bool:
    """True when this PyTorch build has oneDNN and its packed linear kernels."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(torch.nn.Linear):
    """``nn.Linear`` whose fp32 CPU inference runs through oneDNN with a packed weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (
            torch.is_grad_enabled()
            or x.dtype != torch.float32
            or weight.dtype != torch.float32
            or x.device.type != "cpu"
        ):
            return F.linear(x, weight, self.bias)
        key = (weight.data_ptr(), weight._version)  # a new tensor, or the same one written into
        if getattr(self, "_packed_for", None) != key:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
            self._packed_for = key
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")


def drop_packed_weights(model: torch.nn.Module) -> None:
    """Free every packed copy now (each layer packs again when next used): before a weight
    sync overwrites the weights, the copies would only be dead memory beside them."""
    for module in model.modules():
        if isinstance(module, PackedLinear):
            module.__dict__.pop("_packed", None)
            module.__dict__.pop("_packed_for", None)


def pack_linear_layers(model: torch.nn.Module) -> torch.nn.Module:
    """Make every plain ``nn.Linear`` of ``model`` a ``PackedLinear`` (in place; the
    parameters and the state dict stay as they are). Without oneDNN, nothing changes."""
    if onednn_available():
        for module in model.modules():
            if type(module) is torch.nn.Linear:
                module.__class__ = PackedLinear
    return model
