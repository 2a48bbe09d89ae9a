"""How cost grows with the work, on this machine, in one run: four plots (PNG) with
their data beside them (JSON), and a table for each.

    python benchmarks/bench_scaling.py [--only sft convert rollout grpo] [--out .bench/scaling]

- sft: afm-trainer's SFT (`recipes/train_sft.sh 1`, as in bench_sft.py) in trained
  tokens/s against sequence length (batch 8) and batch size (length 512), each point
  beside the plain PyTorch loop on rows of the same length and count (the ratio).
  Every conversation is longer than the largest length, so each sample is cut to it.
- convert: stepwise conversion (`data_preprocess/convert_traces.py`) of 1k to 200k
  seed-002-shaped traces: seconds and peak memory, which must stay flat; the read-all
  converter of bench_convert.py beside it up to 50k traces (it holds every trace).
- rollout: the CPU rollout's decoding (`decode_batch`) of an untrained tiny model (it
  does not stop, so every answer runs to the limit) in generated tokens/s against the
  batch size (128 new tokens, beside transformers' `generate` as a user calls it) and
  against the generation length (batch 32).
- grpo: `recipes/train_grpo.sh 1` on the tiny model, 4 prompts x 4 answers of up to 128
  tokens a step: each step's time split into generation, log-probs, actor update,
  weight sync and the rest, from verl's own timers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# sibling benchmarks: python puts this script's folder first on sys.path
from bench_convert import convert_ours, convert_plain, make_traces
from bench_sft import REPO, WORK, bench_afm, bench_plain, make_data, run_recipe, tiny_model

SFT_LENGTHS, SFT_BATCHES = [256, 512, 1024, 2048], [4, 8, 16, 32]
TRACE_COUNTS, PLAIN_UP_TO = [1_000, 10_000, 50_000, 200_000], 50_000
ROLLOUT_BATCHES, ROLLOUT_LENGTHS = [8, 32, 128], [64, 256, 1024]


def scale_sft(steps: int = 6, warmup: int = 2) -> list[dict]:
    model, data = tiny_model(), os.path.join(WORK, "convs_long.parquet")
    if not os.path.exists(data):
        make_data(data, n=256, word_range=(1800, 2000))  # > 2,048 tokens each
    points = sorted({(length, 8) for length in SFT_LENGTHS} | {(512, batch) for batch in SFT_BATCHES})
    rows = []
    for length, batch in points:
        print(f"sft: length {length}, batch {batch}...", flush=True)
        ours = bench_afm(model, data, steps, warmup, [], batch=batch, max_len=length)
        plain = bench_plain(model, data, steps, warmup, rows_per_step=batch, row_len=length)
        rows.append({"length": length, "batch": batch, "ours": ours["tokens_per_s"], "plain": plain["tokens_per_s"]})
    return rows


def scale_convert() -> list[dict]:
    work = os.path.join(WORK, "convert")
    os.makedirs(work, exist_ok=True)
    rows = []
    for n in TRACE_COUNTS:
        traces = os.path.join(work, f"traces_{n}.jsonl")
        if not os.path.exists(traces):
            print(f"convert: writing {n:,} traces...", flush=True)
            make_traces(traces, n)
        print(f"convert: {n:,} traces...", flush=True)
        seconds, peak = convert_ours(traces, os.path.join(work, f"ours_{n}.parquet"))
        row = {"traces": n, "seconds": seconds, "peak_mb": peak}
        if n <= PLAIN_UP_TO:
            row["plain_seconds"], row["plain_peak_mb"] = convert_plain(traces, os.path.join(work, f"plain_{n}.parquet"))
        rows.append(row)
    return rows


def scale_rollout() -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from afm_trainer.models.decoding import Request, decode_batch, load_decoding_model

    path = tiny_model()
    ours = load_decoding_model(path, torch.float32)
    peer = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    prompt = list(range(100, 164))  # 64 prompt tokens

    def rate_ours(batch: int, new: int) -> float:
        requests = [
            Request(prompt, new, 1.0, want_logprobs=True, generator=torch.Generator().manual_seed(i))
            for i in range(batch)
        ]
        start = time.perf_counter()
        tokens = sum(len(o["token_ids"]) for o in decode_batch(ours, requests))
        return tokens / (time.perf_counter() - start)

    def rate_generate(batch: int, new: int) -> float:
        ids = torch.tensor([prompt] * batch)
        start = time.perf_counter()
        with torch.no_grad():
            out = peer.generate(
                input_ids=ids, do_sample=True, top_k=0, max_new_tokens=new, min_new_tokens=new, pad_token_id=0
            )
        return (out.shape[1] - ids.shape[1]) * batch / (time.perf_counter() - start)

    rate_ours(4, 16), rate_generate(4, 16)  # warm-up
    rows = []
    for batch in ROLLOUT_BATCHES:
        print(f"rollout: batch {batch}, 128 new tokens...", flush=True)
        rows.append(
            {"batch": batch, "new_tokens": 128, "ours": rate_ours(batch, 128), "generate": rate_generate(batch, 128)}
        )
    for new in ROLLOUT_LENGTHS:
        print(f"rollout: batch 32, {new} new tokens...", flush=True)
        rows.append({"batch": 32, "new_tokens": new, "ours": rate_ours(32, new)})
    return rows


TIMERS = ["gen", "old_log_prob", "ref", "update_actor", "update_weights"]


def scale_grpo(steps: int = 5) -> list[dict]:
    from afm_trainer.world.make_world import make_world

    with tempfile.TemporaryDirectory() as tmp:
        make_world(tmp, n_train=20, n_heldout=20)
        subprocess.run(
            [
                sys.executable,
                os.path.join(REPO, "data_preprocess", "make_rl_data.py"),
                "--out",
                os.path.join(tmp, "rl"),
                "--suite",
                "algorithmic",
                "--world",
                tmp,
                "--difficulties",
                "1",
                "--n_train",
                "32",
                "--n_val",
                "4",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        out = os.path.join(WORK, "grpo_run")
        print(f"grpo: {steps} steps of the tiny model...", flush=True)
        arrivals = run_recipe(
            [
                "bash",
                os.path.join(REPO, "recipes", "train_grpo.sh"),
                "1",
                out,
                f"MODEL={tiny_model()}",
                f"TRAIN_FILES={os.path.join(tmp, 'rl', 'train.parquet')}",
                f"VAL_FILES={os.path.join(tmp, 'rl', 'val.parquet')}",
                f"STEPS={steps}",
                "data.train_batch_size=4",
                "actor_rollout_ref.rollout.n=4",
                "actor_rollout_ref.actor.ppo_mini_batch_size=4",
                "data.max_response_length=128",
                "trainer.test_freq=-1",
                "trainer.val_before_train=false",
                "trainer.save_freq=-1",
            ],
            out,
            os.path.join(WORK, "grpo_run.log"),
            "timing_s/step",
        )
    rows = []
    for step in sorted(arrivals):
        line = arrivals[step][1]
        row = {"step": step, "total": line["timing_s/step"]}
        row.update({name: line.get(f"timing_s/{name}", 0.0) for name in TIMERS})
        row["other"] = row["total"] - sum(row[name] for name in TIMERS)
        rows.append(row)
    return rows


def save(fig, title: str, path: str) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot(results: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "sft" in results:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, fixed, fixed_value in ((axes[0], "length", "batch", 8), (axes[1], "batch", "length", 512)):
            rows = [r for r in results["sft"] if r[fixed] == fixed_value]
            xs = [r[key] for r in rows]
            ax.plot(xs, [r["ours"] for r in rows], "o-", label="afm-trainer (verl SFT)")
            ax.plot(xs, [r["plain"] for r in rows], "s--", label="plain PyTorch loop")
            ax.set_xscale("log", base=2)
            ax.set_xlabel(f"{key} ({fixed} {fixed_value})")
            ax.set_ylabel("trained tokens/s")
            ax.legend()
        save(fig, "SFT throughput", os.path.join(out, "sft_scaling.png"))
    if "convert" in results:
        rows = results["convert"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, label in ((axes[0], "seconds", "seconds"), (axes[1], "peak_mb", "peak memory (MB)")):
            ax.plot([r["traces"] for r in rows], [r[key] for r in rows], "o-", label="afm-trainer (streaming)")
            plain = [r for r in rows if f"plain_{key}" in r]
            ax.plot([r["traces"] for r in plain], [r[f"plain_{key}"] for r in plain], "s--", label="read-all converter")
            ax.set_xscale("log")
            ax.set_xlabel("traces")
            ax.set_ylabel(label)
            ax.legend()
        save(fig, "Trace conversion (stepwise)", os.path.join(out, "convert_scaling.png"))
    if "rollout" in results:
        rows = results["rollout"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        by_batch = [r for r in rows if "generate" in r]
        axes[0].plot([r["batch"] for r in by_batch], [r["ours"] for r in by_batch], "o-", label="afm-trainer rollout")
        axes[0].plot([r["batch"] for r in by_batch], [r["generate"] for r in by_batch], "s--", label="generate")
        axes[0].set_xlabel("batch (128 new tokens)")
        by_length = [r for r in rows if "generate" not in r]
        axes[1].plot(
            [r["new_tokens"] for r in by_length], [r["ours"] for r in by_length], "o-", label="afm-trainer rollout"
        )
        axes[1].set_xlabel("new tokens (batch 32)")
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_ylabel("generated tokens/s")
            ax.legend()
        save(fig, "Rollout throughput (fp32)", os.path.join(out, "rollout_scaling.png"))
    if "grpo" in results:
        rows = results["grpo"]
        fig, ax = plt.subplots(figsize=(6, 4))
        bottom = [0.0] * len(rows)
        for name in [*TIMERS, "other"]:
            values = [r[name] for r in rows]
            ax.bar([r["step"] for r in rows], values, bottom=bottom, label=name)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("seconds")
        ax.legend(fontsize=8)
        save(fig, "GRPO step time by phase", os.path.join(out, "grpo_step_split.png"))


def print_tables(results: dict) -> None:
    if "sft" in results:
        print(
            "\n| length | batch | afm-trainer tokens/s | plain loop tokens/s | afm-trainer / plain |\n|---|---|---|---|---|"
        )
        for r in results["sft"]:
            print(
                f"| {r['length']} | {r['batch']} | {r['ours']:,.0f} | {r['plain']:,.0f} | {r['ours'] / r['plain']:.2f}x |"
            )
    if "convert" in results:
        print(
            "\n| traces | seconds | peak MB | read-all seconds | read-all peak MB | speed ratio |\n|---|---|---|---|---|---|"
        )
        for r in results["convert"]:
            plain = (
                f"{r['plain_seconds']:.1f} | {r['plain_peak_mb']:.0f} | {r['plain_seconds'] / r['seconds']:.2f}x"
                if "plain_seconds" in r
                else "- | - | -"
            )
            print(f"| {r['traces']:,} | {r['seconds']:.1f} | {r['peak_mb']:.0f} | {plain} |")
    if "rollout" in results:
        print("\n| batch | new tokens | afm-trainer tokens/s | generate tokens/s | ratio |\n|---|---|---|---|---|")
        for r in results["rollout"]:
            peer = f"{r['generate']:,.0f} | {r['ours'] / r['generate']:.2f}x" if "generate" in r else "- | -"
            print(f"| {r['batch']} | {r['new_tokens']} | {r['ours']:,.0f} | {peer} |")
    if "grpo" in results:
        print("\n| step | total s | " + " | ".join(TIMERS) + " | other |\n|" + "---|" * (len(TIMERS) + 3))
        for r in results["grpo"]:
            print(f"| {r['step']} | {r['total']:.2f} | " + " | ".join(f"{r[n]:.2f}" for n in [*TIMERS, "other"]) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=["sft", "convert", "rollout", "grpo"])
    parser.add_argument("--out", default=os.path.join(WORK, "scaling"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    runs = {"sft": scale_sft, "convert": scale_convert, "rollout": scale_rollout, "grpo": scale_grpo}
    results = {}
    for name in args.only:
        results[name] = runs[name]()
        with open(os.path.join(args.out, f"{name}_scaling.json"), "w") as f:
            json.dump(results[name], f, indent=2)
    print_tables(results)
    plot(results, args.out)
    print(f"\nplots and data: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
