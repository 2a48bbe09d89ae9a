"""Sampled answers per second from the CPU rollout's decoding (`decode_batch`, what
`rollout.name=hf` runs), against transformers' `generate(do_sample=True)` on the same
left-padded prompts, measured in the same run.

    python benchmarks/bench_rollout.py [--model DIR] [--prompts 16] [--n 8] [--max_tokens 256]

The model is the demo's final SFT model when `make demo` has run, else a fresh tiny model
(untrained: it rarely stops, so both decoders run to the token limit). The prompts are
the demo world's easy code tasks, each sampled n times, as one GRPO step asks for them.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

from afm_trainer.checkpoints import latest_complete
from afm_trainer.models.attention import NAME as ROLLOUT_ATTENTION
from afm_trainer.models.decoding import Request, decode_batch
from afm_trainer.world.algorithmic import code_prompt, generate_suite


def default_model(workdir: str) -> str:
    latest = latest_complete(os.path.join("out", "demo", "phase3_summary_prefix"))
    if latest:
        return os.path.join(latest, "huggingface")
    path = os.path.join(workdir, "tiny")
    subprocess.run([sys.executable, "-m", "afm_trainer.models.tiny", "--out", path], check=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (GRPO's group size)")
    parser.add_argument("--max_tokens", type=int, default=256)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as workdir:
        path = args.model or default_model(workdir)
        tokenizer = AutoTokenizer.from_pretrained(path)
        ours = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, attn_implementation=ROLLOUT_ATTENTION
        ).eval()
        peer = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    tasks = generate_suite(42, 1, difficulties=[1, 2, 3])[: args.prompts]
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": code_prompt(t)}], add_generation_prompt=True, tokenize=False
        )
        for t in tasks
    ]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts for _ in range(args.n)]
    stop = {tokenizer.eos_token_id}

    start = time.perf_counter()
    requests = [
        Request(
            prompt_ids=p,
            max_tokens=args.max_tokens,
            temperature=1.0,
            top_k=-1,
            top_p=1.0,
            want_logprobs=True,
            stop_ids=stop,
            generator=torch.Generator().manual_seed(i),
            future=None,
        )
        for i, p in enumerate(ids)
    ]
    outputs = decode_batch(ours, requests, tokenizer.pad_token_id)
    ours_s = time.perf_counter() - start
    ours_tokens = sum(len(o["token_ids"]) for o in outputs)

    tokenizer.padding_side = "left"
    batch = tokenizer(
        [p for p in prompts for _ in range(args.n)], return_tensors="pt", padding=True, add_special_tokens=False
    )
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.no_grad():
        generated = peer.generate(
            **batch,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=args.max_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
    peer_s = time.perf_counter() - start
    new = generated.sequences[:, batch["input_ids"].shape[1] :]
    ends = [(row == tokenizer.eos_token_id).nonzero().flatten().tolist() for row in new]
    peer_tokens = sum(e[0] + 1 if e else new.shape[1] for e in ends)  # up to the stop token, as ours

    answers = len(ids)
    print(
        f"model {path}: {answers} sampled answers ({args.prompts} prompts x {args.n}), at most {args.max_tokens} tokens"
    )
    print("| decoder | time | answers/s | tokens kept |\n|---|---|---|---|")
    print(f"| afm-trainer hf rollout (decode_batch) | {ours_s:.1f} s | {answers / ours_s:.1f} | {ours_tokens} |")
    print(f"| transformers generate(do_sample=True) | {peer_s:.1f} s | {answers / peer_s:.1f} | {peer_tokens} |")
    print(f"speed-up: {peer_s / ours_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
