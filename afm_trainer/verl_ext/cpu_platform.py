"""verl on CPU: a platform plugin, and the few work-arounds verl 0.9.1 needs beside it.

verl has no CPU platform. This module registers one through verl's own plugin registry
(``verl.plugin.platform.PlatformRegistry``). It is imported in every process that
imports verl (torchrun ranks, Ray workers) through the ``verl.plugins`` entry point
declared in setup.py, so nobody has to set anything. verl probes its registered
platforms in order (nvidia, npu, rocm, then plugins), so on a machine with an
accelerator verl's own platform wins and this one is never selected; ``VERL_PLATFORM=cpu``
forces it.

What running verl's trainers on CPU needs, and where each piece lives:

1. device "cpu", collective backend "gloo", no-op memory/stream/profiler functions,
   and ``current_device()`` returning the string "cpu" (``model.to(device=...)``
   otherwise asks for an accelerator)                         -> ``PlatformCPU`` below
2. verl composes the process-group backend as ``cpu:gloo,<device>:<backend>``,
   which on CPU repeats ``cpu:gloo`` and torch rejects it    -> ``_dedupe_backend``
3. verl's engine registry has FSDP engines for "cuda"/"npu" only; they run on CPU
   unchanged, and are registered for "cpu" (gathering the weights once per training
   step instead of twice per micro-batch)                     -> ``cpu_engine.py``
4. FlashAttention does not exist on CPU -> ``attn_implementation=sdpa``, and FSDP1 wants
   GPU tensors -> ``engine.strategy=fsdp2``: both are settings, kept in
   the recipes' ``config/device/cpu.yaml`` (afm_trainer/recipes/sft, .../grpo), not in code.
5. verl's RL reference model (forward only) always gets FSDP2's
   ``CPUOffloadPolicy(pin_memory=True)``, and pinning asks for an accelerator; pinned
   memory only speeds host-to-device copies, so without a device it is a no-op
                                                              -> ``_patch_pin_memory``
6. verl loads the PPO critic (a token-classification model) with
   ``attn_implementation="flash_attention_2"`` written into the call; on CPU it is
   loaded with the attention its config names instead (sdpa)  -> ``_patch_value_model_loading``
7. Without flash-attn's cross-entropy kernel, verl computes token log-probs with one
   ``logsumexp`` per row of the logits. On the packed path (``use_remove_padding``) a row
   is a token, so every micro-batch became thousands of tiny autograd nodes. Chunks of
   rows keep the memory bound the loop was written for, with a few nodes instead, and
   one fused backward (softmax minus one-hot, as cross-entropy's)
                                                            -> ``_patch_token_logprobs``
"""

from __future__ import annotations

import contextlib
import functools
import os
from types import ModuleType

import torch
import torch.distributed
from verl.plugin.platform import PlatformBase, PlatformRegistry

PLATFORM_NAME = "cpu"


def has_accelerator() -> bool:
    """True when torch sees a CUDA (or ROCm) or Ascend device in this process."""
    if torch.cuda.is_available():
        return True
    npu = getattr(torch, "npu", None)
    return bool(npu is not None and npu.is_available())


def runs_here() -> bool:
    """True when verl will select this platform in this process: ``VERL_PLATFORM=cpu``,
    or no override and no accelerator."""
    override = os.environ.get("VERL_PLATFORM", "").strip().lower()
    return override == PLATFORM_NAME if override else not has_accelerator()


def _dedupe_backend(backend: str | None) -> str | None:
    """'cpu:gloo,cpu:gloo' -> 'cpu:gloo'; any other string is returned unchanged."""
    if not backend or ":" not in backend:
        return backend
    pairs = list(dict.fromkeys(part.strip() for part in backend.split(",")))
    return ",".join(pairs)


def _patch_init_process_group() -> None:
    """Make ``torch.distributed.init_process_group`` accept verl's repeated backend string.

    Only strings torch would reject are changed, so the patch is harmless for any
    valid call; it is applied once, and only in processes that selected this platform.
    """
    original = torch.distributed.init_process_group
    if getattr(original, "_afm_dedupe", False):
        return

    @functools.wraps(original)
    def init_process_group(*args, **kwargs):
        if args:
            args = (_dedupe_backend(args[0]),) + args[1:]
        elif "backend" in kwargs:
            kwargs["backend"] = _dedupe_backend(kwargs["backend"])
        return original(*args, **kwargs)

    init_process_group._afm_dedupe = True
    torch.distributed.init_process_group = init_process_group


def _patch_pin_memory() -> None:
    """``Tensor.pin_memory()`` returns the tensor itself (only in processes that selected
    this platform, i.e. have no accelerator to pin for)."""
    original = torch.Tensor.pin_memory
    if getattr(original, "_afm_noop", False):
        return

    def pin_memory(self, *args, **kwargs):
        return self

    pin_memory._afm_noop = True
    torch.Tensor.pin_memory = pin_memory


def _patch_value_model_loading() -> None:
    """Replace ``verl.utils.model.load_valuehead_model`` (looked up at call time by verl's
    FSDP engine) with one that keeps the config's attention implementation."""
    import verl.utils.model as model_utils

    if getattr(model_utils.load_valuehead_model, "_afm_cpu", False):
        return

    def load_valuehead_model(local_path, torch_dtype, model_config, trust_remote_code):
        from transformers import AutoModelForTokenClassification

        attention = getattr(model_config, "_attn_implementation", None) or "sdpa"
        return AutoModelForTokenClassification.from_pretrained(
            local_path,
            torch_dtype=torch_dtype,
            config=model_config,
            trust_remote_code=trust_remote_code,
            attn_implementation="sdpa" if attention.startswith("flash") else attention,
        )

    load_valuehead_model._afm_cpu = True
    model_utils.load_valuehead_model = load_valuehead_model


LOGPROB_CHUNK_ELEMENTS = 2**24  # logits per logsumexp call: 64 MB of fp32


class _TokenLogProbs(torch.autograd.Function):
    """log_softmax(logits)[labels] over rows of logits, chunk by chunk.

    The backward writes d/dlogits = grad * (onehot(label) - softmax) straight into one
    tensor of the logits' shape, as a fused cross-entropy does; autograd through
    gather + logsumexp + split would build three such tensors and add them."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        chunk = max(1, LOGPROB_CHUNK_ELEMENTS // rows.shape[-1])
        logsumexp = torch.cat([torch.logsumexp(part, dim=-1) for part in rows.split(chunk)])
        ctx.save_for_backward(rows, labels, logsumexp)
        ctx.chunk = chunk
        return rows.gather(-1, labels[:, None])[:, 0] - logsumexp

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, labels, logsumexp = ctx.saved_tensors
        grad_rows = torch.empty_like(rows)
        for start in range(0, rows.shape[0], ctx.chunk):
            part = slice(start, start + ctx.chunk)
            torch.exp(rows[part] - logsumexp[part, None], out=grad_rows[part])  # softmax
            grad_rows[part].mul_(-grad[part, None])
        grad_rows.scatter_add_(-1, labels[:, None], grad[:, None])
        return grad_rows, None


def chunked_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[labels] for float32/64 logits of any shape (..., vocab)."""
    rows = logits.reshape(-1, logits.shape[-1])
    return _TokenLogProbs.apply(rows, labels.reshape(-1)).view(labels.shape)


def _patch_token_logprobs() -> None:
    """Point ``verl.utils.torch_functional.logprobs_from_logits_v2`` (looked up at call
    time by ``logprobs_from_logits``) at the chunked version for float32/64 logits;
    bfloat16 keeps verl's own path (it avoids logsumexp there for stability)."""
    import verl.utils.torch_functional as functional

    original = functional.logprobs_from_logits_v2
    if getattr(original, "_afm_chunked", False):
        return

    @functools.wraps(original)
    def logprobs_from_logits_v2(logits, labels):
        if logits.dtype in (torch.float32, torch.float64):
            return chunked_token_logprobs(logits, labels)
        return original(logits, labels)

    logprobs_from_logits_v2._afm_chunked = True
    functional.logprobs_from_logits_v2 = logprobs_from_logits_v2


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _mem_get_info(device=None) -> tuple[int, int]:
    import psutil

    memory = psutil.virtual_memory()
    return memory.available, memory.total


def _make_device_module() -> ModuleType:
    """``torch.cpu`` plus the ``torch.cuda`` functions verl calls on its device module.

    Memory figures are the process's resident memory (verl logs them as "allocated"/
    "reserved"), so its memory lines stay meaningful on CPU; cache, IPC and memory-
    fraction calls have nothing to do.
    """
    module = ModuleType("afm_trainer_cpu_device")
    module.__getattr__ = lambda name: getattr(torch.cpu, name)
    noop = lambda *args, **kwargs: None  # noqa: E731
    module.empty_cache = module.ipc_collect = module.set_per_process_memory_fraction = noop
    module.reset_peak_memory_stats = noop
    module.memory_allocated = module.memory_reserved = lambda device=None: _rss_bytes()
    module.max_memory_allocated = module.max_memory_reserved = lambda device=None: _peak_rss_bytes()
    module.mem_get_info = _mem_get_info
    module.get_rng_state = lambda device=None: torch.get_rng_state()
    module.set_rng_state = lambda state, device=None: torch.set_rng_state(state)
    module.get_device_name = lambda device=None: "cpu"
    module.Event = torch.Event
    return module


_DEVICE_MODULE = _make_device_module()


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """Plain CPU: one "device", gloo collectives, torch's own RNG."""

    def __init__(self):
        _patch_init_process_group()
        _patch_pin_memory()
        _patch_value_model_loading()
        _patch_token_logprobs()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return _DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check=False) -> bool:
        # Probed after verl's own platforms; say yes only when no accelerator is visible.
        return not has_accelerator()

    def current_device(self) -> str:
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index) -> None:
        pass

    def synchronize(self, device_index=None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # No such variable exists for CPUs; verl only reads it when it is set.
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        # verl's Ray worker groups place one worker per logical "GPU"; on CPU those are
        # bookkeeping resources declared with ray_init.num_gpus, never real devices.
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self):
        return None
