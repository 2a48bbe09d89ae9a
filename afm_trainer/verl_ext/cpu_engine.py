"""verl's FSDP engines on CPU, registered for device "cpu" in verl's engine registry.

verl registers its FSDP engines for "cuda" and "npu" only; they run on CPU unchanged,
and the classes here are them with one change to how a training step runs.

verl's FSDP2 engine gathers each layer's weights before every micro-batch's forward,
frees them after it, gathers them again for its backward and frees them once more.
On CPU a gather is a copy of the weights made on the same cores that do the math (on
one rank, all of it), so a step of many small micro-batches spends a few percent of its
time copying. Here a training step gathers the weights at its first forward and keeps
them gathered until its last micro-batch's backward: FSDP2's own trade of memory for
fewer gathers during gradient accumulation (``set_reshard_after_backward(False)`` with
the gradient sync deferred, as verl already defers it). The price is one full copy of
the weights held for the step, small beside what a model trained on CPU needs anyway.

Outside a training step nothing changes: the weights are sharded again after the last
backward, so the optimizer step, forward-only passes (log-probs, validation),
checkpoints and weight sync to the rollout see them exactly as in verl.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

from torch.distributed.fsdp import FSDPModule

with warnings.catch_warnings():
    # verl's engine package warns about each optional GPU engine that is not installed
    # (megatron, torchtitan, ...); none of them runs on CPU.
    warnings.filterwarnings("ignore", message=r".* engine is not available", category=UserWarning)
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead


class _GatherWeightsOncePerStep:
    """Mixin for verl's FSDP engines (see the module's docstring)."""

    @contextmanager
    def _gradient_sync_context(self, *, is_last_micro_batch: bool):
        # verl enters this around each training micro-batch's forward and backward.
        if not isinstance(self.module, FSDPModule):  # FSDP1 (GPU only) keeps verl's behaviour
            with super()._gradient_sync_context(is_last_micro_batch=is_last_micro_batch):
                yield
            return
        fsdp_modules = [m for m in self.module.modules() if isinstance(m, FSDPModule)]
        for module in fsdp_modules:
            module.set_reshard_after_forward(False, recurse=False)
        self.module.set_reshard_after_backward(is_last_micro_batch)
        try:
            with super()._gradient_sync_context(is_last_micro_batch=is_last_micro_batch):
                yield
        except BaseException:
            for module in fsdp_modules:  # a failed step must not leave stale gathered weights behind
                module.reshard()
            raise
        finally:
            for module in fsdp_modules:
                module.set_reshard_after_forward(self.engine_config.reshard_after_forward, recurse=False)
            self.module.set_reshard_after_backward(True)


@EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device="cpu")
class CPUFSDPEngineWithLMHead(_GatherWeightsOncePerStep, FSDPEngineWithLMHead):
    """verl's actor/SFT engine on CPU."""


@EngineRegistry.register(model_type="value_model", backend=["fsdp", "fsdp2"], device="cpu")
class CPUFSDPEngineWithValueHead(_GatherWeightsOncePerStep, FSDPEngineWithValueHead):
    """verl's critic engine on CPU."""
