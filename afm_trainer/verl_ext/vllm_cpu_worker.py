"""vLLM's CPU engine in its own interpreter, the engine of ``rollout.custom.engine=vllm``
(``vllm_cpu.py`` starts it; see there why it is a separate process).

Run by path with the vLLM environment's Python, so it imports vLLM and nothing of
afm-trainer. It connects back to the address it is given and serves, one at a time:
``("generate", [request dict, ...])`` -> one output dict per request, ``("load",
safetensors bytes)`` -> the number of tensors loaded, ``("close", None)``.
"""

import os
import sys
from multiprocessing.connection import Client


def sampling_params(request: dict):
    from vllm import SamplingParams

    return SamplingParams(
        temperature=max(0.0, request["temperature"]),  # <= 0: greedy, as in decode_batch
        top_k=request["top_k"] if request["top_k"] > 0 else 0,
        top_p=request["top_p"],
        max_tokens=request["max_tokens"],
        # The rollout's stop tokens exactly (they include EOS unless rollout.ignore_eos).
        stop_token_ids=sorted(request["stop_ids"]),
        ignore_eos=True,
        logprobs=0 if request["want_logprobs"] else None,
        detokenize=False,
    )


def generate(llm, requests: list[dict]) -> list[dict]:
    prompts = [{"prompt_token_ids": r["prompt_ids"]} for r in requests]
    outputs = llm.generate(prompts, [sampling_params(r) for r in requests], use_tqdm=False)
    results = []
    for request, output in zip(requests, outputs):
        sample = output.outputs[0]
        log_probs = []
        if request["want_logprobs"]:
            log_probs = [step[token].logprob for step, token in zip(sample.logprobs, sample.token_ids)]
        results.append({"token_ids": list(sample.token_ids), "log_probs": log_probs, "stop_reason": "completed"})
    return results


def load(llm, blob: bytes) -> int:
    from safetensors.torch import load as load_safetensors

    weights = load_safetensors(blob)
    llm.collective_rpc(
        "reload_weights", kwargs={"weights_iterator": iter(weights.items()), "is_checkpoint_format": True}
    )
    llm.reset_prefix_cache()  # cached prompt keys/values were computed with the old weights
    return len(weights)


def main() -> None:
    host, port, model, dtype, max_model_len, max_num_seqs, seed, logprobs_mode = sys.argv[1:9]
    connection = Client((host, int(port)), authkey=bytes.fromhex(os.environ.pop("AFM_VLLM_AUTHKEY")))
    from vllm import LLM

    llm = LLM(
        model=model,
        dtype=dtype,
        enforce_eager=True,  # compiling takes minutes on a few cores and gains nothing there
        gpu_memory_utilization=0.3,
        seed=int(seed),  # per-request seeds fail on CPU ("CPU Generator does not use offset")
        max_model_len=int(max_model_len),
        max_num_seqs=int(max_num_seqs),
        logprobs_mode=logprobs_mode,
    )
    connection.send(("ready", None))
    while True:
        kind, payload = connection.recv()
        if kind == "close":
            connection.send(("ok", None))
            return
        try:
            result = generate(llm, payload) if kind == "generate" else load(llm, payload)
            connection.send(("ok", result))
        except Exception as exc:  # the caller raises it; the engine stays up
            connection.send(("error", f"{type(exc).__name__}: {exc}"))


if __name__ == "__main__":
    main()
