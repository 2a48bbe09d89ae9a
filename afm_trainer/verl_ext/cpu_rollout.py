"""A CPU rollout backend for verl: ``actor_rollout_ref.rollout.name=hf``.

verl 0.9.1 ships vLLM, SGLang and TensorRT-LLM rollouts, all GPU-only, so its RL trainer
cannot run on a CPU machine. This module adds one through verl's own registries
(no edits to verl), which makes the whole RL loop run -- and be tested -- on a laptop:

- ``HFRolloutServer``: a Ray actor holding a Hugging Face copy of the policy. The agent
  loops call ``generate(prompt_ids, sampling_params, request_id)`` concurrently; the
  server gathers what arrives within a few milliseconds into one batch and decodes it
  (``afm_trainer/models/decoding.py``), answering each request as soon as its row
  finishes and letting requests that arrive meanwhile (a multi-turn agent's next turn,
  after its tool call) join the running batch; it honours each request's temperature, top-k,
  top-p, max tokens, stop tokens and seed (``rollout.seed`` unless the request carries its own).
  With ``rollout.custom.engine=vllm`` (the recipes' ``ROLLOUT=vllm`` without GPUs) vLLM's
  CPU build decodes instead, in a process of its own (``vllm_cpu.py``).
- ``HFRolloutReplica``: verl's ``RolloutReplica`` for it (one server per replica).
- ``HFRolloutAdapter``: the ``BaseRollout`` that lives in the FSDP worker. After every
  training step verl hands it the actor's full parameters; every rank drains them (the
  gather is collective) and the replica's leader ships them to its server, so each
  rollout samples from the current policy. ``rollout.custom.sync_weights=false`` skips
  the shipping (the server keeps its start weights): verl's
  ``training/rollout_probs_diff_mean`` then grows, which is how the sync is tested.
- ``rollout.custom.trace=PATH`` appends a JSON line per running batch (step, start, seconds,
  requests, prompt and new tokens): where a step's generation time goes, turn by turn
  (the GRPO recipe sets it to OUT_DIR/rollout_batches.jsonl on CPU; its report reads it).

On GPU the same recipes use ``rollout.name=vllm``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from verl.workers.rollout import base as rollout_base
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput

from afm_trainer.models.cpu_linear import drop_packed_weights
from afm_trainer.models.decoding import Request, RunningBatch, load_decoding_model

logger = logging.getLogger(__name__)

NAME = "hf"
# A batch starts once no request has arrived for this long (or it is full): the agent
# loop sends a step's requests one by one, and a batch started on the first few keeps
# the rest waiting for its longest answer.
BATCH_WAIT_S = 0.02
# Requests that arrive while a batch decodes join it after at most this many steps: often
# enough that an agent's next turn does not wait long, seldom enough that copying the
# cache to make room for them stays a small part of the decoding.
ADMIT_EVERY_STEPS = 8


@dataclass
class ServedBatch:
    """What one batch served (the rollout trace's line): its requests, their outputs, and
    the tokens its prefills ran, padding included."""

    started: float
    requests: list[Request] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    padded_prompt_tokens: int = 0

    def answer(self, request: Request, output: dict) -> None:
        self.outputs.append(output)
        if not request.future.done():  # a caller that went away (cancelled) fails nobody else
            request.future.set_result(output)


def _server_name(replica_rank: int) -> str:
    return f"afm_hf_rollout_server_{replica_rank}"


class HFRolloutServer:
    """The rollout engine of one replica (a Ray actor; see the module docstring)."""

    def __init__(self, config, model_config, replica_rank: int):
        from transformers import AutoTokenizer
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.config import HFModelConfig

        config = omega_conf_to_dataclass(config)
        model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.config, self.replica_rank = config, replica_rank
        custom = dict(config.custom or {})
        self.sync_weights = str(custom.get("sync_weights", True)).lower() not in ("false", "0")
        self.trace = custom.get("trace")  # a JSONL path: one line per decoded batch (the RL report's breakdown)
        torch.set_num_threads(int(custom.get("threads", os.cpu_count() or 1)))
        path = model_config.local_path
        dtype = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16}.get(
            str(config.dtype), torch.float32
        )
        # The actor's attention (models/attention.py): standard SDPA with the padding mask
        # that left-padded prompts need, and decoding steps without copying the cache per head;
        # linear layers packed for oneDNN, re-packed by themselves after each weight sync.
        self.model = load_decoding_model(path, dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        self.max_model_len = config.max_model_len or config.prompt_length + config.response_length
        self.vllm, engine = None, custom.get("engine", "hf")
        if engine == "vllm":  # vLLM's CPU build decodes; the model above only checks weights
            from afm_trainer.verl_ext.vllm_cpu import VLLMEngine

            self.vllm = VLLMEngine(
                custom["vllm_python"],
                path,
                str(dtype).removeprefix("torch."),
                self.max_model_len,
                config.max_num_seqs,
                config.seed,
                config.logprobs_mode,
                threads=torch.get_num_threads(),
            )
        elif engine != "hf":
            raise ValueError(f"rollout.custom.engine must be hf or vllm, got {engine!r}")
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else []) | {
            tokenizer.eos_token_id
        }
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.queue: list[Request] = []
        self.wake = asyncio.Event()
        self.engine_lock = asyncio.Lock()  # a weight update never lands mid-batch
        self.aborting = False
        self.global_steps = 0
        self.batcher = None
        self.request_count = 0

    def ready(self) -> bool:
        return True

    # --- generation ---

    def _request(self, prompt_ids: list[int], sampling_params: dict[str, Any]) -> Request:
        params = dict(sampling_params)
        budget = self.max_model_len - len(prompt_ids)
        if budget < 1:
            raise ValueError(
                f"prompt of {len(prompt_ids)} tokens leaves no room within max_model_len {self.max_model_len}"
            )
        default = min(
            self.config.response_length, self.config.prompt_length + self.config.response_length - len(prompt_ids)
        )
        max_tokens = params.get("max_tokens", params.get("max_new_tokens", default))
        seed = params.get("seed")
        self.request_count += 1
        # One stream per request: seeded by the request, else by rollout.seed and its order
        generator = torch.Generator().manual_seed(
            int(seed) if seed is not None else self.config.seed * 1_000_003 + self.request_count
        )
        stop_ids = set() if self.config.ignore_eos else set(self.eos_ids)
        stop_ids |= set(params.get("stop_token_ids") or [])
        return Request(
            prompt_ids=list(map(int, prompt_ids)),
            max_tokens=max(1, min(int(max_tokens), budget)),
            temperature=float(params.get("temperature", self.config.temperature)),
            top_k=int(params.get("top_k", -1) or -1),
            top_p=float(params.get("top_p", 1.0)),
            want_logprobs=bool(params.get("logprobs")),
            stop_ids=stop_ids,
            generator=generator,
            future=asyncio.get_running_loop().create_future(),
        )

    async def generate(
        self,
        prompt_ids,
        sampling_params,
        request_id,
        image_data=None,
        video_data=None,
        audio_data=None,
        mm_processor_kwargs=None,
        priority=0,
        **kwargs,
    ) -> TokenOutput:
        if image_data or video_data or audio_data:
            raise NotImplementedError("the hf CPU rollout is text-only")
        request = self._request(prompt_ids, sampling_params)
        if self.batcher is None:
            self.batcher = asyncio.get_running_loop().create_task(self._batch_forever())
        self.queue.append(request)
        self.wake.set()
        result = await request.future
        return TokenOutput(
            token_ids=result["token_ids"],
            log_probs=result["log_probs"] if request.want_logprobs else None,
            stop_reason=result["stop_reason"],
            extra_fields={"global_steps": self.global_steps},
        )

    async def _batch_forever(self):
        while True:
            await self.wake.wait()
            queued = 0
            while len(self.queue) != queued and len(self.queue) < self.config.max_num_seqs:  # still arriving, room left
                queued = len(self.queue)
                await asyncio.sleep(BATCH_WAIT_S)
            if not self.queue:
                self.wake.clear()
                continue
            async with self.engine_lock:
                batch = ServedBatch(started=time.time())
                try:
                    if self.vllm is not None:
                        await self._decode_with_vllm(batch)
                    else:
                        await self._decode_continuously(batch)
                except Exception as exc:  # a failed batch fails its requests, not the server
                    for r in batch.requests:
                        if not r.future.done():
                            r.future.set_exception(exc)
                    continue
                if self.trace:
                    self._trace_batch(batch)
            if not self.queue:
                self.wake.clear()

    async def _decode_with_vllm(self, batch: ServedBatch) -> None:
        batch.requests, self.queue = self.queue[: self.config.max_num_seqs], self.queue[self.config.max_num_seqs :]
        widest = max(len(r.prompt_ids) for r in batch.requests)
        batch.padded_prompt_tokens = widest * len(batch.requests)
        results = await asyncio.to_thread(self.vllm.generate, batch.requests)
        for r, out in zip(batch.requests, results):
            batch.answer(r, out)

    async def _decode_continuously(self, batch: ServedBatch) -> None:
        """One running batch until nothing is left to decode: requests that arrive while it
        runs join it every ADMIT_EVERY_STEPS steps (a join copies the cache once), and each
        request is answered as soon as its row finishes, so an agent's next turn can join."""
        running, admitted_at = RunningBatch(self.model, self.pad_id), 0
        while self.queue or running.live:
            room = self.config.max_num_seqs - len(running.live)
            due = not running.live or running.steps - admitted_at >= ADMIT_EVERY_STEPS
            if self.queue and room > 0 and due:
                joining, self.queue = self.queue[:room], self.queue[room:]
                batch.requests += joining
                batch.padded_prompt_tokens += await asyncio.to_thread(running.admit, joining)
                admitted_at = running.steps
            steps = ADMIT_EVERY_STEPS - (running.steps - admitted_at) if self.queue else ADMIT_EVERY_STEPS
            for r, out in await asyncio.to_thread(running.run, max(steps, 1), lambda: self.aborting):
                batch.answer(r, out)

    def _trace_batch(self, batch: ServedBatch) -> None:
        """One line per batch, from its first request to its last answer."""
        line = {
            "step": self.global_steps,
            "start": batch.started,
            "seconds": time.time() - batch.started,
            "requests": len(batch.requests),
            "greedy": all(r.temperature <= 0 for r in batch.requests),  # validation decodes greedily
            "prompt_tokens": sum(len(r.prompt_ids) for r in batch.requests),
            "padded_prompt_tokens": batch.padded_prompt_tokens,
            "new_tokens": sum(len(out["token_ids"]) for out in batch.outputs),
        }
        with open(self.trace, "a") as f:
            f.write(json.dumps(line) + "\n")

    # --- weights ---

    async def update_weights(
        self, state_dict: dict[str, torch.Tensor], global_steps: int | None = None, last: bool = True
    ) -> dict:
        """Load the actor's parameters (HF names), one bucket a call (``last`` on the final
        one). Unknown names are an error; after the last bucket, so is any parameter no
        bucket held, except tied weights."""
        async with self.engine_lock:
            if global_steps is not None:
                self.global_steps = global_steps
            if not self.sync_weights:
                return {"loaded": 0}
            if not getattr(self, "_loaded_names", None):  # a sync's first bucket
                self._loaded_names = set()
                drop_packed_weights(self.model)
            dtype = next(self.model.parameters()).dtype
            result = self.model.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, strict=False)
            if result.unexpected_keys:
                self._loaded_names = set()
                raise RuntimeError(f"weights do not fit the rollout model: unexpected {result.unexpected_keys[:5]}")
            self._loaded_names |= set(state_dict)
            if self.vllm is not None:
                await asyncio.to_thread(self.vllm.load, state_dict)
            if not last:
                return {"loaded": len(state_dict)}
            loaded, self._loaded_names = self._loaded_names, set()
            tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
            missing = set(self.model.state_dict()) - loaded - tied
            if missing:
                raise RuntimeError(f"weights do not fit the rollout model: missing {sorted(missing)[:5]}")
            if tied:
                self.model.tie_weights()
            return {"loaded": len(loaded)}

    # --- control methods verl's replica calls; CPU memory needs no paging ---

    async def wake_up(self, tags=None):
        pass

    async def sleep(self):
        """Called when sampling ends: the packed copies are dead memory until the next
        sampling, which follows a weight sync that would repack them anyway."""
        async with self.engine_lock:
            drop_packed_weights(self.model)

    async def clear_kv_cache(self):
        pass  # the cache lives only for one batch

    async def release_kv_cache(self):
        pass

    async def resume_kv_cache(self):
        pass

    async def abort_all_requests(self, reject_request: bool = False, **kwargs) -> dict:
        self.aborting = True
        async with self.engine_lock:  # the running batch returns what it has, marked aborted
            pass
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self):
        self.aborting = False

    async def set_global_steps(self, global_steps: int):
        self.global_steps = global_steps

    async def start_profile(self, **kwargs):
        pass

    async def stop_profile(self):
        pass


class HFRolloutReplica(RolloutReplica):
    """One HF server per replica, placed on the node of the replica's first worker."""

    async def launch_servers(self):
        options: dict[str, Any] = {
            "name": _server_name(self.replica_rank),
            "max_concurrency": self.max_concurrency,
            "num_cpus": 0,
        }
        if self.workers:
            node_id = await self.workers[0].__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
            options["scheduling_strategy"] = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                node_id=node_id, soft=False
            )
        server = (
            ray.remote(HFRolloutServer).options(**options).remote(self.config, self.model_config, self.replica_rank)
        )
        await server.ready.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"ray://{_server_name(self.replica_rank)}"  # token-in/token-out only, no HTTP

    def rollout_worker_use_gpu(self) -> bool:
        return False


class HFRolloutAdapter(rollout_base.BaseRollout):
    """The worker side: ships the actor's weights to the replica's server each step."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1, **kwargs):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        world = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.is_leader_rank = rank % world == 0
        self.sync_weights = str(dict(self.config.custom or {}).get("sync_weights", True)).lower() not in ("false", "0")
        self.server = None

    async def resume(self, tags: list[str]):
        pass  # weights and cache stay in host memory

    async def release(self):
        pass

    async def update_weights(self, weights, wire_format: str = "named_tensors", **kwargs):
        if wire_format != "named_tensors":
            raise NotImplementedError(f"the hf rollout takes full named tensors, not {wire_format!r}")
        if kwargs.get("peft_config") is not None:
            raise NotImplementedError(
                "the hf rollout takes merged weights: set actor_rollout_ref.model.lora.merge=True"
            )
        # Buckets of checkpoint_engine.update_weights_bucket_megabytes: the actor's copy and
        # the one in flight stay that small instead of a whole model each.
        engine = getattr(self.config, "checkpoint_engine", None)
        bucket_bytes = int(getattr(engine, "update_weights_bucket_megabytes", 2048)) << 20
        if self.is_leader_rank and self.server is None:
            self.server = ray.get_actor(_server_name(self.replica_rank))
        global_steps = kwargs.get("global_steps")
        bucket, size = {}, 0
        for name, tensor in weights:  # every rank drains: producing a full tensor is a collective
            if self.is_leader_rank and self.sync_weights:
                bucket[name] = tensor.detach().to("cpu", copy=True)
                size += bucket[name].nbytes
                if size >= bucket_bytes:
                    await self.server.update_weights.remote(bucket, global_steps, last=False)
                    bucket, size = {}, 0
        if self.is_leader_rank:
            await self.server.update_weights.remote(bucket, global_steps, last=True)


def register() -> None:
    """Make ``rollout.name=hf`` known to both of verl's rollout registries."""
    rollout_base._ROLLOUT_REGISTRY[(NAME, "async")] = f"{__name__}.HFRolloutAdapter"
    RolloutReplicaRegistry.register(NAME, lambda: HFRolloutReplica)


register()
