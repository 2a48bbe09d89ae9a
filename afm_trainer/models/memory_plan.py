"""A memory plan per rank, read before a run starts: what verl's FSDP2 engine will hold for
a recipe (sft, dpo, distill, grpo) on a model, from the model's HF config and the recipe's
composed Hydra config (with the user's overrides), in GiB, with the dtype of each term.

    python scripts/plan_memory.py --model MODEL_DIR_OR_CONFIG_JSON --recipe sft [--nproc N] [--nnodes K] [overrides ...]

``plan(...)`` returns a dict: ``terms`` (one per row: ``bytes``, ``dtype``, the ``phases``
of the run it is alive in, ``where``: device or host memory, and how it was computed),
``phase_bytes`` (each phase's sum of the terms in the device's memory; on CPU, all),
``total_bytes`` (the largest phase: the expected peak per rank; on CPU what a smoke run's
peak RSS per rank compares with), ``host_bytes`` on GPU, and the settings it read. A
phase's sum adds its terms as if they all peaked together. It is an estimate, not a
bound: some terms never meet (the loss's logit copies are gone before the embedding's
backward copies appear) while what is not counted (the allocator's caching, the loader's
batch, checkpoint saving) adds; ``make smoke-real-shape`` measures every recipe's peak
against it.

What decides each term (verl 0.9.1, torch's FSDP2, transformers' Qwen2):

- weights: the FSDP2 shard of every parameter, in ``engine.model_dtype`` (fp32: verl
  loads the model in it and FSDP2 keeps the sharded master copy), / the shard group
  (``engine.fsdp_size``, -1: every rank). Gradients: the shard of each trainable
  parameter, in the same dtype. Optimizer: AdamW's exp_avg and exp_avg_sq, two fp32
  states per trainable parameter, sharded like them.
- FSDP all-gather: verl wraps every decoder layer with ``fully_shard`` (and, untied,
  ``embed_tokens`` and ``lm_head``), then the root module. A unit's parameters are
  gathered unsharded, in ``mixed_precision.param_dtype``, for its forward and backward;
  the root (with tied embeddings: the embedding and LM head) stays unsharded from the
  forward to the end of the backward. Counted: the root plus the largest other unit,
  parameters and (trainable) unsharded gradients before their reduce-scatter.
- tied embeddings (full fine-tuning): the embedding's backward writes a dense (vocab x
  hidden) gradient, and autograd adds it to the LM head's gradient out of place: two
  more of the tied matrix at the end of the backward (seen op by op on CPU).
- activations: per token per decoder layer, the tensors autograd saves in a Qwen2 layer
  (``layer_activation_bytes``; equal to 0.1% to what ``saved_tensors_hooks`` sees on CPU).
  Gradient checkpointing (``model.enable_gradient_checkpointing``, HF's non-reentrant):
  each layer's input, and a recomputed layer only where it outgrows the logits and their
  copies, which the backward frees before it recomputes any layer.
- logits: verl's engine materialises the micro-batch's full logits, (tokens, vocab), in
  the compute dtype, then ``logprobs_from_logits`` (verl/utils/torch_functional.py):
  flash-attn's cross-entropy with an in-place backward where flash-attn is installed
  (GPU), else ``logprobs_from_logits_v2``, whose backward holds the logits' gradient and
  the stacked per-row gradients (2 more copies in fp32; 1 saved log-softmax in bf16).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3
RECIPES = ("sft", "dpo", "distill", "grpo")
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
_DTYPE_NAMES = {
    "fp32": "fp32",
    "float32": "fp32",
    "32": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "16": "fp16",
}
# What one process holds before any model: python, torch, transformers and verl imported
# (RSS measured on this project's CPU build: ~0.5 GiB). On GPU the CUDA context takes about
# as much device memory.
RUNTIME_BYTES = GIB // 2
# peft's names of a Qwen2/Llama decoder layer's linear modules, what "all-linear" selects.
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The teacher's top-k of add_teacher_topk.py when the data does not say.
DEFAULT_TOPK = 8
KNOWN_MODEL_TYPES = ("qwen2", "qwen3", "llama", "mistral")


class PlanError(Exception):
    """Bad input (model, recipe, overrides): reported as one ``error:`` line."""


def dtype_name(value) -> str:
    name = _DTYPE_NAMES.get(str(value).removeprefix("torch.").lower())
    if name is None:
        raise PlanError(f"unknown dtype {value!r}")
    return name


# ---------------------------------------------------------------------------------------
# The model: shape and parameter counts from the HF config


@dataclass(frozen=True)
class ModelShape:
    name: str
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @classmethod
    def from_hf_config(cls, config: dict, name: str = "model") -> ModelShape:
        missing = [
            k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size") if k not in config
        ]
        if missing:
            raise PlanError(f"{name}: the config has no {', '.join(missing)} (not a decoder-only HF config?)")
        if any(k in config for k in ("num_experts", "num_local_experts", "n_routed_experts")):
            raise PlanError(f"{name}: a mixture-of-experts config; the plan models dense Qwen2-style decoders only")
        model_type = config.get("model_type", "")
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        attention_bias = bool(config.get("attention_bias", False))
        return cls(
            name=name,
            model_type=model_type,
            hidden=hidden,
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate=int(config.get("intermediate_size") or 4 * hidden),
            vocab=int(config["vocab_size"]),
            # the default of Qwen2Config, Qwen3Config, LlamaConfig, MistralConfig
            tied=bool(config.get("tie_word_embeddings", False)),
            # Qwen2: biases on q, k, v and not on o; Llama/Qwen3/Mistral: attention_bias on all four
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type != "qwen2" and attention_bias,
            mlp_bias=bool(config.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
        )


def load_model_shape(model: str) -> ModelShape:
    """A model folder (its config.json), a config.json path, or a published shape's name
    (``afm_trainer.models.real_shape.ARCHS``, e.g. ``qwen2.5-0.5b``)."""
    from afm_trainer.models.real_shape import ARCHS

    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PlanError(f"--model {model} is a folder without config.json (not a HF model folder)")
        path, name = path / "config.json", path.resolve().name
    elif path.is_file():
        name = path.resolve().parent.name if path.name == "config.json" else path.stem
    elif model in ARCHS:
        return ModelShape.from_hf_config(ARCHS[model], model)
    else:
        raise PlanError(
            f"--model {model} does not exist (a HF model folder, a config.json, or one of {', '.join(ARCHS)})"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PlanError(f"--model {model}: cannot read {path}: {exc}") from None
    return ModelShape.from_hf_config(config, name)


def layer_parameters(shape: ModelShape) -> dict[str, int]:
    h, q, kv, inter = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    return {
        "q_proj": h * q + (q if shape.qkv_bias else 0),
        "k_proj": h * kv + (kv if shape.qkv_bias else 0),
        "v_proj": h * kv + (kv if shape.qkv_bias else 0),
        "o_proj": q * h + (h if shape.o_bias else 0),
        "gate_proj": h * inter + (inter if shape.mlp_bias else 0),
        "up_proj": h * inter + (inter if shape.mlp_bias else 0),
        "down_proj": inter * h + (h if shape.mlp_bias else 0),
        "norms": 2 * h + (2 * shape.head_dim if shape.qk_norm else 0),
    }


def parameter_counts(shape: ModelShape) -> dict[str, int]:
    """Parameters by part; ``total`` counts a tied embedding/LM head once (as
    ``sum(p.numel() for p in model.parameters())`` does)."""
    embed = shape.vocab * shape.hidden
    layer = sum(layer_parameters(shape).values())
    lm_head = 0 if shape.tied else embed
    counts = {"embed": embed, "layer": layer, "layers": layer * shape.layers, "final_norm": shape.hidden}
    counts["lm_head"] = lm_head
    counts["total"] = embed + layer * shape.layers + shape.hidden + lm_head
    return counts


def lora_targets(target_modules, exclude_modules=None) -> tuple[str, ...]:
    """The decoder-layer linears a peft LoRA config adapts ("all-linear": every linear but
    the output layer, peft's rule)."""
    if target_modules in (None, "all-linear"):
        names = LINEAR_MODULES
    elif isinstance(target_modules, str):  # peft takes a string as a regex over module names
        import re

        names = tuple(n for n in LINEAR_MODULES if re.fullmatch(target_modules, n) or target_modules == n)
    else:
        names = tuple(n for n in LINEAR_MODULES if any(n == t or str(t).endswith(n) for t in target_modules))
    excluded = [exclude_modules] if isinstance(exclude_modules, str) else list(exclude_modules or [])
    return tuple(n for n in names if not any(n == e or str(e).endswith(n) for e in excluded))


def lora_parameters(shape: ModelShape, rank: int, targets: tuple[str, ...]) -> int:
    """A (r x in) and B (out x r) for every adapted linear of every layer."""
    h, q, kv, inter = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    sizes = {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }
    return shape.layers * sum(rank * sum(sizes[n]) for n in targets)


# ---------------------------------------------------------------------------------------
# Activations and logits


def attention_output_copies(attn_implementation: str) -> int:
    """Copies of the attention output a layer saves: FlashAttention's output is o_proj's
    input; SDPA's (B, heads, T, d) output is saved by the kernel and its transposed
    contiguous copy by o_proj."""
    return 1 if str(attn_implementation).startswith("flash_attention") else 2


def layer_activation_bytes(
    shape: ModelShape,
    act_bytes: int,
    attn_implementation: str,
    trainable_norms: bool = True,
    lora_rank: int = 0,
    lora_linears: int = len(LINEAR_MODULES),
) -> int:
    """Bytes autograd saves per token in one decoder layer (Qwen2-style: RMSNorm, GQA
    attention with RoPE, SwiGLU MLP; no dropout), computing in ``act_bytes``:

    - each of the 2 RMSNorms: its input upcast to fp32 (4h) and rsqrt (4), the normalised
      input (b h: the weight's multiply saves it, only when the weight trains), and its
      output (b h, saved by the next linears: q/k/v, gate/up);
    - attention: q and k after RoPE and v, saved by the kernel (b (q + 2 kv)), the output
      (b q, once with FlashAttention, twice with SDPA), and the fp32 logsumexp (4 heads);
      RoPE's cos/sin are shared by all layers (``other_activation_bytes``); no (T x T)
      matrix: FlashAttention and SDPA's fused kernels keep none (eager attention would);
    - MLP: gate's output (silu's input), silu's output, up's output and their product
      (down's input): 4 b I;
    - LoRA (the norms frozen): each adapter's r-wide middle (b r per adapted linear); the
      linears' inputs stay saved, by the adapters' A (exact for "all-linear").
    """
    h, b, f = shape.hidden, act_bytes, 4
    norms = 2 * (f * h + 4 + (b * h if trainable_norms else 0) + b * h)
    attention = b * (shape.q_dim + 2 * shape.kv_dim) + attention_output_copies(attn_implementation) * b * shape.q_dim
    attention += 4 * shape.heads
    if shape.qk_norm:  # Qwen3: RMSNorm over each head of q and k
        attention += (f + (b if trainable_norms else 0)) * (shape.q_dim + shape.kv_dim) + 4 * (
            shape.heads + shape.kv_heads
        )
    mlp = 4 * b * shape.intermediate
    return norms + attention + mlp + b * lora_rank * lora_linears


def other_activation_bytes(shape: ModelShape, act_bytes: int, full_finetune: bool = True) -> int:
    """Per token, outside the layers: the final norm (fp32 input and rsqrt; its normalised
    input and output only when its weight and the LM head train), RoPE's cos and sin."""
    h, b = shape.hidden, act_bytes
    return 4 * h + 4 + (2 * b * h if full_finetune else 0) + 2 * b * shape.head_dim


def logits_loss_copies(logits_dtype: str, flash_ce: bool) -> tuple[float, str]:
    """Copies of the (tokens, vocab) logits the log-prob loss adds, in the logits' dtype,
    and why (verl.utils.torch_functional.logprobs_from_logits)."""
    if flash_ce:
        return 0.0, "flash-attn cross-entropy: backward in place in the logits, only a per-token lse"
    if logits_dtype == "fp32":
        return (
            2.0,
            "logprobs_from_logits_v2 (fp32: per-row logsumexp): backward holds the logits' grad + the stacked row grads",
        )
    return 1.0, "logprobs_from_logits_v2 (bf16: per-row log_softmax): the saved log-softmax rows"


def flash_ce_available(device: str) -> bool:
    """Whether verl's logprobs_from_logits will take flash-attn's in-place cross-entropy."""
    if device == "cpu" or os.environ.get("VERL_DISABLE_FLASH_ATTN_CE", "0") == "1":
        return False
    try:
        return importlib.util.find_spec("flash_attn") is not None
    except (ImportError, ValueError):
        return False


# ---------------------------------------------------------------------------------------
# The recipe's config


def compose_recipe_config(recipe: str, overrides: list[str] | tuple[str, ...] = (), device: str | None = None):
    """The trainer's config as it will see it: the recipe's Hydra config composed with the
    overrides (as afm_trainer/recipes/dpo/main.py's ``composed_config``), the device group
    picked as the recipes pick it (``device=cpu|gpu`` among the overrides, else what torch sees)."""
    from hydra import compose, initialize_config_dir

    if recipe not in RECIPES:
        raise PlanError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    overrides = list(overrides)
    if not any(o.split("=", 1)[0].lstrip("+~") == "device" for o in overrides):
        if device is None:
            from afm_trainer.recipes.common import visible_gpus

            device = "gpu" if visible_gpus() else "cpu"
        overrides.insert(0, f"device={device}")
    try:
        with initialize_config_dir(config_dir=str(RECIPES_DIR / recipe / "config"), version_base=None):
            return compose(config_name=recipe, overrides=overrides)
    except Exception as exc:  # Hydra raises several types for a bad override
        message = " ".join(str(exc).split())
        raise PlanError(f"the {recipe} configuration does not compose with these overrides: {message}") from None


def _select(config, key: str, default=None):
    from omegaconf import OmegaConf

    value = OmegaConf.select(config, key, default=default, throw_on_missing=False)
    return default if value is None else value


def _precision(engine) -> tuple[str, str, str]:
    """(model dtype, FSDP param dtype, reduce dtype) of an engine config, as verl's
    FSDPEngine resolves them (no mixed_precision block: bf16 params, fp32 reduce)."""
    model_dtype = dtype_name(_select(engine, "model_dtype", "fp32"))
    mixed = _select(engine, "mixed_precision")
    param = dtype_name(mixed.get("param_dtype", "bf16")) if mixed is not None else "bf16"
    reduce = dtype_name(mixed.get("reduce_dtype", "fp32")) if mixed is not None else "fp32"
    return model_dtype, param, reduce


def _parquet_files(spec) -> list[str]:
    if spec is None or str(spec) == "???":
        return []
    items = [spec] if isinstance(spec, str) else list(spec)
    files = []
    for item in items:
        for part in str(item).split(","):
            if os.path.isdir(part):
                files += sorted(str(p) for p in Path(part).glob("*.parquet"))
            elif os.path.isfile(part):
                files.append(part)
    return files


def _count_rows(files: list[str]) -> int | None:
    if not files:
        return None
    import pyarrow.parquet as pq

    try:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except Exception:
        return None


def _teacher_k(files: list[str]) -> int | None:
    if not files:
        return None
    import pyarrow.parquet as pq

    try:
        column = pq.ParquetFile(files[0]).read_row_group(0, columns=["teacher_k"]).column(0)
        return int(column[0].as_py())
    except Exception:
        return None


# ---------------------------------------------------------------------------------------
# The plan


@dataclass
class Term:
    key: str
    label: str
    bytes: int
    dtype: str
    phases: tuple[str, ...]
    detail: str
    where: str = "device"  # or "host": offloaded to CPU memory on a GPU run

    def as_dict(self) -> dict:
        return {
            "key": self.key,
            "label": self.label,
            "bytes": int(self.bytes),
            "gib": self.bytes / GIB,
            "dtype": self.dtype,
            "phases": list(self.phases),
            "detail": self.detail,
            "where": self.where,
        }


def _n(value) -> str:
    return f"{int(value):,}"


def _shard(total_bytes: float, group: int) -> int:
    return math.ceil(total_bytes / group)


class _Builder:
    """The rows of a plan, and the FSDP2 units of verl's ``apply_fsdp2`` for the model."""

    def __init__(self, shape: ModelShape, counts: dict, shard_group: int):
        self.shape, self.counts, self.group = shape, counts, shard_group
        self.terms: list[Term] = []

    def add(self, key, label, nbytes, dtype, phases, detail, where="device") -> Term:
        term = Term(key, label, int(nbytes), dtype, tuple(phases), detail, where)
        self.terms.append(term)
        return term

    def units(self) -> tuple[int, int, str]:
        """(root unit's params, the largest other unit's params, its name). verl wraps each
        decoder layer, and untied ``embed_tokens`` and ``lm_head``, then the root (which
        then holds a tied embedding/LM head and the final norm)."""
        s, c = self.shape, self.counts
        if s.tied:
            return c["embed"] + c["final_norm"], c["layer"], "a decoder layer"
        if c["embed"] >= c["layer"]:
            return c["final_norm"], c["embed"], "lm_head"
        return c["final_norm"], c["layer"], "a decoder layer"


def plan(
    model: str | ModelShape,
    recipe: str = "sft",
    nproc: int = 1,
    nnodes: int = 1,
    overrides: list[str] | tuple[str, ...] = (),
    device: str | None = None,
    pairs: int | None = None,
    topk: int | None = None,
    config=None,
) -> dict:
    """The memory plan per rank of ``recipe`` on ``model`` over ``nproc`` x ``nnodes`` ranks.

    ``model``: a model folder, a config.json, a published shape's name or a ModelShape.
    ``overrides``: Hydra overrides of the recipe's config, as on the recipe's command line
    (``device=cpu|gpu`` picks the device group; default: what torch sees, as the recipes).
    ``pairs`` (dpo): preference pairs in the training set, else counted in
    ``data.train_files`` when those exist. ``topk`` (distill): the teacher's k, else read
    from ``data.train_files`` (``teacher_k``), else 8. ``config``: an already composed
    config (skips Hydra)."""
    if nproc < 1 or nnodes < 1:
        raise PlanError(f"--nproc and --nnodes must be 1 or more, got {nproc} and {nnodes}")
    if recipe not in RECIPES:
        raise PlanError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    shape = model if isinstance(model, ModelShape) else load_model_shape(model)
    if config is None:
        config = compose_recipe_config(recipe, overrides, device)
    world = nproc * nnodes
    if recipe == "grpo":
        result = _plan_grpo(shape, config, world)
    else:
        result = _plan_sft_engine(shape, config, world, recipe, pairs, topk)
    if shape.model_type not in KNOWN_MODEL_TYPES:
        result["notes"].insert(0, f"model_type {shape.model_type!r} is planned as a Qwen2/Llama-style dense decoder")
    result.update(recipe=recipe, nproc=nproc, nnodes=nnodes, world_size=world)
    return _finish(result)


def _model_settings(model_cfg) -> dict:
    return {
        "lora_rank": int(_select(model_cfg, "lora_rank", 0) or 0),
        "target_modules": _select(model_cfg, "target_modules", "all-linear"),
        "exclude_modules": _select(model_cfg, "exclude_modules"),
        "gradient_checkpointing": bool(_select(model_cfg, "enable_gradient_checkpointing", True)),
        # verl's HFModelConfig default
        "attn_implementation": str(_select(model_cfg, "override_config.attn_implementation", "flash_attention_2")),
    }


def _training_terms(
    b: _Builder,
    *,
    engine,
    optim,
    model: dict,
    tokens: int,
    tokens_detail: str,
    device: str,
    weight_phases: tuple[str, ...],
    optimizer_phases: tuple[str, ...],
    notes: list[str],
) -> dict:
    """Weights, gradients, optimizer state, FSDP all-gather, activations and logits of one
    training engine (an SFT-family trainer's, or GRPO's actor). The ``train`` phase is a
    micro-batch's forward and backward; ``step`` the optimizer step."""
    shape, counts, group = b.shape, b.counts, b.group
    model_dtype, param_dtype, reduce_dtype = _precision(engine)
    mb, pb = DTYPE_BYTES[model_dtype], DTYPE_BYTES[param_dtype]
    total = counts["total"]
    lora = model["lora_rank"] > 0
    targets: tuple[str, ...] = ()
    if lora:
        targets = lora_targets(model["target_modules"], model["exclude_modules"])
        trainable = lora_parameters(shape, model["lora_rank"], targets)
        trainable_detail = f"LoRA r={model['lora_rank']} on {'/'.join(targets)}: {_n(trainable)} params"
    else:
        trainable, trainable_detail = total, f"{_n(total)} params"
    offload_params = bool(_select(engine, "param_offload", False)) and device != "cpu"
    offload_optimizer = bool(_select(engine, "optimizer_offload", False)) and device != "cpu"
    b.add(
        "weights",
        "weights (FSDP shard)",
        _shard((total + trainable if lora else total) * mb, group),
        model_dtype,
        ("init",) + weight_phases + ("train", "step"),
        f"{_n(total)}{' + ' + _n(trainable) + ' LoRA' if lora else ''} params x {mb} B / {group} ranks",
        "host" if offload_params else "device",
    )
    b.add(
        "gradients",
        "gradients (FSDP shard)",
        _shard(trainable * mb, group),
        model_dtype,
        ("train", "step"),
        f"{trainable_detail} x {mb} B / {group} ranks",
    )
    optimizer = str(_select(optim, "optimizer", "AdamW"))
    if optimizer.lower() not in ("adamw", "adam"):
        notes.append(f"optim.optimizer={optimizer}: planned as AdamW (2 fp32 states a parameter)")
    b.add(
        "optimizer",
        "optimizer state (AdamW)",
        _shard(trainable * 2 * 4, group),
        "fp32",
        optimizer_phases + ("train", "step"),
        f"exp_avg + exp_avg_sq: 2 x 4 B x {_n(trainable)} trainable / {group} ranks",
        "host" if offload_optimizer else "device",
    )
    root, unit, unit_name = b.units()
    # unsharded grads wait for their reduce-scatter; a frozen base has only the adapters'
    grads = trainable // max(shape.layers, 1) if lora else root + unit
    b.add(
        "fsdp_gathered",
        "FSDP all-gathered params + grads",
        (root + unit + grads) * pb,
        param_dtype,
        ("train",),
        f"root unit {_n(root)}{' (tied embed/lm_head)' if shape.tied else ''}, unsharded fwd to bwd, + {unit_name} "
        f"{_n(unit)}: params + {'grads' if not lora else 'a layer of LoRA grads'}, x {pb} B",
    )
    if shape.tied and not lora:
        # The embedding's backward writes a dense (vocab x hidden) gradient, and autograd
        # adds it to the LM head's, already in .grad, out of place: two more of the
        # tied matrix at the end of the backward.
        b.add(
            "tied_embedding_grads",
            "tied embedding: backward copies",
            2 * shape.vocab * shape.hidden * pb,
            param_dtype,
            ("train",),
            f"embedding_dense_backward's {_n(shape.vocab)} x {shape.hidden} gradient + its out-of-place sum "
            f"with lm_head's, x {pb} B",
        )
    full = not lora
    layer = layer_activation_bytes(shape, pb, model["attn_implementation"], full, model["lora_rank"], len(targets))
    other = other_activation_bytes(shape, pb, full)
    # lm_head's output under FSDP2's mixed precision: the compute dtype; verl does not upcast it
    logits = tokens * shape.vocab * pb
    copies, why = logits_loss_copies(param_dtype, flash_ce_available(device))
    if model["gradient_checkpointing"]:
        # The peak is the backward's start (all layer inputs, the logits and the loss's
        # copies); a layer is recomputed after those are freed: only its excess counts.
        recompute = max(0, tokens * layer - int((1 + copies) * logits))
        activations = tokens * (shape.layers * pb * shape.hidden + other) + recompute
        formula = (
            f"checkpointing on: {_n(tokens)} tok x ({shape.layers} layer inputs x {pb * shape.hidden} B + {_n(other)} B)"
            f" + a recomputed layer ({_n(layer)} B/tok) beyond the freed logits: {_n(recompute)} B"
        )
    else:
        activations = tokens * (shape.layers * layer + other)
        formula = f"checkpointing off: {_n(tokens)} tok x ({shape.layers} layers x {_n(layer)} B + {_n(other)} B)"
    b.add("activations", "activations", activations, param_dtype, ("train",), formula)
    b.add(
        "logits",
        "logits",
        logits,
        param_dtype,
        ("train",),
        f"{_n(tokens)} tok x {_n(shape.vocab)} vocab x {pb} B",
    )
    b.add(
        "loss_logit_copies",
        "log-prob loss: logit copies",
        copies * logits,
        param_dtype,
        ("train",),
        f"{copies:g} x logits: {why}",
    )
    b.add(
        "optimizer_step_temp",
        "optimizer step temporaries",
        _shard(trainable * 4, group),
        "fp32",
        ("step",),
        "foreach AdamW's sqrt(exp_avg_sq) of the whole shard: trainable x 4 B",
    )
    return {
        "model_dtype": model_dtype,
        "param_dtype": param_dtype,
        "reduce_dtype": reduce_dtype,
        "trainable": trainable,
        "lora_targets": list(targets),
        "flash_ce": copies == 0,
        "micro_batch_tokens": tokens,
        "tokens_detail": tokens_detail,
        "layer_bytes_per_token": layer,
        "other_bytes_per_token": other,
    }


def _forward_only(b: _Builder, key: str, label: str, tokens: int, dtype: str, phases, detail: str, attn: str):
    """A no-grad forward's working set: the gathered root + one unit, one layer's
    transients (bounded by what it would save) and the micro-batch's logits."""
    shape, db = b.shape, DTYPE_BYTES[dtype]
    root, unit, _ = b.units()
    layer = layer_activation_bytes(shape, db, attn)
    b.add(
        key,
        label,
        (root + unit) * db + tokens * layer + tokens * shape.vocab * db,
        dtype,
        phases,
        f"no grad, {detail}: gathered {_n(root + unit)} params x {db} B + 1 layer {_n(tokens)} tok x {_n(layer)} B "
        f"+ logits {_n(tokens)} x {_n(shape.vocab)} x {db} B",
    )


def _model_load(b: _Builder, model_dtype: str, device: str) -> None:
    """verl's _build_module loads the whole model into CPU memory on every rank when the
    embeddings are tied (no meta-device init), on rank 0 only otherwise; then
    fsdp2_load_full_state_dict broadcasts it into the shards (the weights row)."""
    total, mb = b.counts["total"], DTYPE_BYTES[model_dtype]
    where = "every rank (tied: no meta-device init)" if b.shape.tied else "rank 0 (the others: meta device)"
    b.add(
        "init_full_model",
        "model load: full copy",
        total * mb,
        model_dtype,
        ("init",),
        f"{_n(total)} params x {mb} B in CPU memory on {where}, before sharding",
        "host",
    )


def _plan_sft_engine(shape: ModelShape, config, world: int, recipe: str, pairs, topk) -> dict:
    engine, data = config.engine, config.data
    device = "cpu" if str(_select(config, "trainer.device", "cuda")) == "cpu" else "gpu"
    counts = parameter_counts(shape)
    fsdp_size = int(_select(engine, "fsdp_size", -1) or -1)
    b = _Builder(shape, counts, fsdp_size if fsdp_size > 0 else world)
    notes: list[str] = []
    model = _model_settings(config.model)
    sp = int(_select(engine, "ulysses_sequence_parallel_size", 1) or 1)

    max_length = int(data.max_length)
    if bool(_select(data, "use_dynamic_bsz", True)):
        tokens = int(data.max_token_len_per_gpu)
        tokens_detail = f"data.max_token_len_per_gpu={tokens}, dynamic batching"
        if recipe != "dpo" and tokens < max_length:  # AgentSFTTrainer.fit_micro_batch_budget
            tokens = max_length
            tokens_detail += f", raised to data.max_length={max_length}"
    else:
        rows = int(data.micro_batch_size_per_gpu)
        tokens = math.ceil(rows * (2 if recipe == "dpo" else 1) * max_length / sp)
        tokens_detail = (
            f"data.micro_batch_size_per_gpu={rows}{' pairs x 2' if recipe == 'dpo' else ''} x data.max_length={max_length}"
            + (f" / ulysses {sp}" if sp > 1 else "")
        )
    dpo_mode = str(_select(config, "dpo.reference", "precomputed")) if recipe == "dpo" else None
    settings = _training_terms(
        b,
        engine=engine,
        optim=config.get("optim"),
        model=model,
        tokens=tokens,
        tokens_detail=tokens_detail,
        device=device,
        weight_phases=("reference",) if dpo_mode else (),
        # AdamW's states appear at the first step: after the precompute, before a live reference
        optimizer_phases=("reference",) if dpo_mode == "live" else (),
        notes=notes,
    )
    _model_load(b, settings["model_dtype"], device)
    param_dtype = settings["param_dtype"]

    if dpo_mode == "precomputed":
        n_pairs = pairs if pairs is not None else _count_rows(_parquet_files(_select(data, "train_files")))
        n_val = _count_rows(_parquet_files(_select(data, "val_files"))) or 0
        b.add(
            "dpo_reference_logps",
            "DPO reference log-probs (stored)",
            2 * 4 * ((n_pairs or 0) + n_val),
            "fp32",
            ("train", "step"),
            "[pairs, 2] fp32 on every rank: "
            + (f"{_n(n_pairs)} train" if n_pairs is not None else "? train pairs (give --pairs or data.train_files)")
            + f" + {_n(n_val)} val pairs x 8 B",
        )
        _forward_only(
            b,
            "dpo_reference_forward",
            "DPO reference precompute forward",
            tokens,
            param_dtype,
            ("reference",),
            "once before training, same engine, start weights",
            model["attn_implementation"],
        )
        notes.append(
            "DPO reference (dpo.reference=precomputed): PreferenceTrainer._reference_logps runs the training engine's "
            "infer_batch over every pair once, before the first step; no second model is held"
        )
    elif dpo_mode == "live":
        _forward_only(
            b,
            "dpo_reference_forward",
            "DPO live reference forward (adapter off)",
            tokens,
            param_dtype,
            ("reference",),
            "every step before the update, LoRA adapter disabled",
            model["attn_implementation"],
        )
        notes.append("DPO reference (dpo.reference=live): a no-grad forward a step with the LoRA adapter off")
    if recipe == "distill":
        k = topk or _teacher_k(_parquet_files(_select(data, "train_files"))) or DEFAULT_TOPK
        b.add(
            "distill_teacher_topk",
            "teacher top-k (ids + log-probs)",
            tokens * k * (8 + 4),
            "int64+fp32",
            ("train",),
            f"{_n(tokens)} tok x k={k} x (8 B id + 4 B log-prob)",
        )
        per_element = 8 if param_dtype == "fp32" else 14
        b.add(
            "distill_logit_copies",
            "distillation: student logit copies",
            tokens * shape.vocab * per_element,
            "fp32",
            ("train",),
            f"student_topk_log_probs' logits.float() / temperature, kept for logsumexp's backward, + grads: "
            f"{per_element} B x {_n(tokens)} tok x {_n(shape.vocab)} vocab",
        )
    phases = ("init", "train", "step") + (("reference",) if dpo_mode else ())
    b.add("runtime", "runtime (python, torch, verl)", RUNTIME_BYTES, "-", phases, "approx.: imports' RSS")
    notes += _common_notes()
    return {
        "model": {**shape.__dict__, "parameters": counts["total"], "counts": counts},
        "device": device,
        "shard_group": b.group,
        "settings": {**settings, **model},
        "terms": b.terms,
        "notes": notes,
    }


def _common_notes() -> list[str]:
    return [
        "activations: memory_plan.layer_activation_bytes, a Qwen2 decoder layer's saved tensors per token "
        "(measured to 0.1% on CPU); tokens = the micro-batch's packed tokens (verl's remove-padding path)",
        "FSDP2 may prefetch the next layer's all-gather: up to one more decoder layer of params",
        "a phase's total adds its rows as if they all peaked at once: an estimate, not a bound (some rows never "
        "meet; what is not counted adds); make smoke-real-shape measures each recipe's peak against it",
        "not counted: allocator caching and fragmentation, the loader's batch, checkpoint saving",
    ]


def _plan_grpo(shape: ModelShape, config, world: int) -> dict:
    arr = config.actor_rollout_ref
    device = "cpu" if str(_select(config, "trainer.device", "cuda")) == "cpu" else "gpu"
    counts = parameter_counts(shape)
    actor_engine = arr.actor.fsdp_config
    fsdp_size = int(_select(actor_engine, "fsdp_size", -1) or -1)
    b = _Builder(shape, counts, fsdp_size if fsdp_size > 0 else world)
    notes: list[str] = []
    model = _model_settings(arr.model)
    prompt, response = int(config.data.max_prompt_length), int(config.data.max_response_length)
    seq = prompt + response
    sp = int(_select(arr.actor, "ulysses_sequence_parallel_size", 1) or 1)

    def micro_tokens(dynamic, max_tokens, micro_batch, what) -> tuple[int, str]:
        if dynamic:
            return int(max_tokens), f"{what} token budget {int(max_tokens)}, dynamic batching"
        return math.ceil(int(micro_batch) * seq / sp), f"{what}={micro_batch} x (prompt {prompt} + response {response})"

    tokens, tokens_detail = micro_tokens(
        bool(arr.actor.use_dynamic_bsz),
        arr.actor.ppo_max_token_len_per_gpu,
        arr.actor.ppo_micro_batch_size_per_gpu,
        "actor.ppo_micro_batch_size_per_gpu",
    )
    rollout = arr.rollout
    # GPU: vLLM sleeps (weights and KV released) while the actor trains; CPU: the hf rollout
    # server is a Ray actor of its own, holding its weights all run
    free_cache = bool(_select(rollout, "free_cache_engine", True)) and device != "cpu"
    settings = _training_terms(
        b,
        engine=actor_engine,
        optim=arr.actor.get("optim"),
        model=model,
        tokens=tokens,
        tokens_detail=tokens_detail,
        device=device,
        weight_phases=("rollout", "logprob"),
        optimizer_phases=("rollout", "logprob"),
        notes=notes,
    )
    _model_load(b, settings["model_dtype"], device)
    param_dtype = settings["param_dtype"]
    everything = ("rollout", "logprob", "train", "step")

    use_ref = bool(_select(config, "algorithm.use_kl_in_reward", False)) or bool(arr.actor.use_kl_loss)
    ref_model_dtype, ref_param_dtype, _ = _precision(arr.ref.fsdp_config)
    if use_ref and model["lora_rank"] == 0:
        rb = DTYPE_BYTES[ref_model_dtype]
        b.add(
            "ref_weights",
            "reference weights (FSDP shard)",
            _shard(counts["total"] * rb, b.group),
            ref_model_dtype,
            everything,
            f"{_n(counts['total'])} params x {rb} B / {b.group} ranks"
            + ("; verl offloads them (forward_only: CPUOffloadPolicy)" if device != "cpu" else ""),
            "host" if device != "cpu" else "device",
        )
    elif use_ref:
        notes.append("reference = the actor with its LoRA adapter off (verl's ref_in_actor): no second model")
    ref_tokens, ref_detail = micro_tokens(
        bool(arr.ref.log_prob_use_dynamic_bsz),
        arr.ref.log_prob_max_token_len_per_gpu,
        arr.ref.log_prob_micro_batch_size_per_gpu,
        "ref.log_prob_micro_batch_size_per_gpu",
    )
    old_tokens, old_detail = micro_tokens(
        bool(rollout.log_prob_use_dynamic_bsz),
        rollout.log_prob_max_token_len_per_gpu,
        rollout.log_prob_micro_batch_size_per_gpu,
        "rollout.log_prob_micro_batch_size_per_gpu",
    )
    if use_ref and ref_tokens * DTYPE_BYTES[ref_param_dtype] > old_tokens * DTYPE_BYTES[param_dtype]:
        what = ("log-prob forward (reference)", ref_tokens, ref_param_dtype, ref_detail)
    else:
        what = ("log-prob forward (old policy)", old_tokens, param_dtype, old_detail)
    _forward_only(b, "logprob_forward", what[0], what[1], what[2], ("logprob",), what[3], model["attn_implementation"])

    rollout_dtype = dtype_name(_select(rollout, "dtype", "bfloat16"))
    rd = DTYPE_BYTES[rollout_dtype]
    tp = int(_select(rollout, "tensor_model_parallel_size", 1) or 1)
    n, batch = int(rollout.n), int(config.data.train_batch_size)
    b.add(
        "rollout_weights",
        f"rollout weights ({rollout.name})",
        _shard(counts["total"] * rd, tp),
        rollout_dtype,
        ("rollout",) if free_cache else everything,
        f"{_n(counts['total'])} params x {rd} B / tp {tp}"
        + ("; released while training (free_cache_engine)" if free_cache else "; the rollout server's own copy"),
    )
    if str(rollout.name) == "hf" and rollout_dtype == "fp32" and device == "cpu":
        linear = shape.layers * sum(v for k, v in layer_parameters(shape).items() if k in LINEAR_MODULES)
        linear += shape.vocab * shape.hidden  # the LM head, a linear layer even when tied
        b.add(
            "rollout_packed",
            "rollout: packed linear weights",
            _shard(linear * rd, tp),
            rollout_dtype,
            ("rollout",),
            f"oneDNN's copy of {_n(linear)} linear-layer params x {rd} B; freed when sampling ends",
        )
    engine_cfg = _select(rollout, "checkpoint_engine")
    bucket = int(_select(engine_cfg, "update_weights_bucket_megabytes", 2048) or 2048) << 20
    b.add(
        "weight_sync_bucket",
        "weight sync: bucket in flight",
        2 * min(bucket, counts["total"] * rd),
        rollout_dtype,
        ("step",),
        f"checkpoint_engine.update_weights_bucket_megabytes={bucket >> 20}: the actor's copy and the server's",
    )
    kv_tokens = batch * n * seq
    kv_bytes = shape.layers * 2 * shape.kv_heads * shape.head_dim * kv_tokens * rd
    b.add(
        "rollout_kv_cache",
        "rollout KV cache",
        _shard(kv_bytes, world),
        rollout_dtype,
        ("rollout",),
        f"{shape.layers} layers x 2 x {shape.kv_heads} kv heads x {shape.head_dim} x "
        f"({batch} prompts x n={n} x ({prompt}+{response}) tok) x {rd} B / {world} ranks",
    )
    b.add(
        "runtime", "runtime (python, torch, verl)", RUNTIME_BYTES, "-", ("init",) + everything, "approx.: imports' RSS"
    )
    if device != "cpu" and str(rollout.name) == "vllm":
        notes.append(
            f"vLLM reserves rollout.gpu_memory_utilization={rollout.gpu_memory_utilization} of the GPU for weights and "
            "KV pool whatever this estimate; the KV row is what one step's sequences need"
        )
    notes += _common_notes() + [
        "phases: rollout (generation), logprob (old-policy/reference forwards, no grad), train (actor micro-batch), step",
        "max_response_length bounds a multi-turn response with its tool outputs; per-token GRPO tensors "
        "(advantages, old/ref log-probs) are not counted",
    ]
    return {
        "model": {**shape.__dict__, "parameters": counts["total"], "counts": counts},
        "device": device,
        "shard_group": b.group,
        "settings": {
            **settings,
            **model,
            "rollout_dtype": rollout_dtype,
            "rollout_sequences": batch * n,
            "rollout_tokens": kv_tokens,
            "use_ref": use_ref,
        },
        "terms": b.terms,
        "notes": notes,
    }


def _finish(result: dict) -> dict:
    """Sums per phase of what is in the device's memory (on CPU: everything) and, on GPU,
    of what verl keeps in host memory; the total is the device's largest phase."""
    terms: list[Term] = result["terms"]
    cpu = result["device"] == "cpu"
    device_phases: dict[str, int] = {}
    host_phases: dict[str, int] = {}
    for term in terms:
        sums = device_phases if cpu or term.where == "device" else host_phases
        for phase in term.phases:
            sums[phase] = sums.get(phase, 0) + int(term.bytes)
    peak = max(device_phases, key=device_phases.get)
    result["terms"] = [t.as_dict() for t in terms]
    result["by_key"] = {t["key"]: t for t in result["terms"]}
    result["phase_bytes"] = device_phases
    result["peak_phase"] = peak
    result["total_bytes"] = device_phases[peak]
    result["total_gib"] = device_phases[peak] / GIB
    result["host_phase_bytes"] = host_phases
    result["host_bytes"] = max(host_phases.values(), default=0)
    return result


PHASE_ORDER = ("init", "reference", "rollout", "logprob", "train", "step")


def format_plan(result: dict) -> str:
    """The plan as a table per rank, then the totals per phase and the notes."""
    m, s = result["model"], result["settings"]
    cpu = result["device"] == "cpu"
    lines = [
        f"memory plan per rank: {result['recipe']} on {m['name']} ({m['model_type']}, {m['parameters']:,} parameters, "
        f"{'tied' if m['tied'] else 'untied'} embeddings), {result['world_size']} rank(s) = {result['nnodes']} node(s)"
        f" x {result['nproc']}, device {result['device']}",
        f"  micro-batch: {s['micro_batch_tokens']:,} tokens ({s['tokens_detail']})",
        f"  precision: weights {s['model_dtype']} (model_dtype), compute/all-gather {s['param_dtype']} "
        f"(mixed_precision.param_dtype), reduce {s['reduce_dtype']}; gradient checkpointing "
        f"{'on' if s['gradient_checkpointing'] else 'off'}; attention {s['attn_implementation']}; "
        + (f"LoRA r={s['lora_rank']} ({s['trainable']:,} trainable)" if s["lora_rank"] else "full fine-tuning"),
        "",
    ]
    terms = result["terms"]
    width = max(len(t["label"]) for t in terms) + 2
    phase_width = max(len(",".join(t["phases"])) for t in terms) + 2
    header = f"  {'term':<{width}}{'GiB':>9}  {'dtype':<11}{'phases':<{phase_width}}how"
    rule = "  " + "-" * (len(header) + 40)
    lines += [header, rule]
    for t in terms:
        host = "" if cpu or t["where"] == "device" else " [host memory]"
        lines.append(
            f"  {t['label']:<{width}}{t['gib']:>9.3f}  {t['dtype']:<11}{','.join(t['phases']):<{phase_width}}"
            f"{t['detail']}{host}"
        )
    lines.append(rule)
    memory = "memory" if cpu else "GPU memory"
    for phase in PHASE_ORDER:
        if phase in result["phase_bytes"]:
            mark = "  <- peak" if phase == result["peak_phase"] else ""
            lines.append(f"  {'phase ' + phase:<{width}}{result['phase_bytes'][phase] / GIB:>9.3f}{mark}")
    lines.append(
        f"  {'total per rank':<{width}}{result['total_gib']:>9.3f}  {memory} at the peak ({result['peak_phase']})"
    )
    if not cpu and result["host_bytes"]:
        lines.append(
            f"  {'host memory per rank':<{width}}{result['host_bytes'] / GIB:>9.3f}  the terms marked [host memory], at their peak"
        )
    lines.append("")
    lines += [f"  note: {n}" for n in result["notes"]]
    return "\n".join(lines)
