"""SFT throughput on this machine: afm-trainer's defaults vs TRL vs a plain PyTorch loop.

    python benchmarks/bench_sft.py [--steps 14] [--warmup 4] [--skip_trl] [--rounds 3] [--ours KEY=VALUE ...]

Same model (the tiny Qwen2, 4.2M parameters), same data (512 conversations of 2-6
messages, ~50-900 tokens each), same global batch (16 conversations), max length 1024,
all in one run. Prints trained (non-padding) tokens per second for each contender, the
ratios, and each one's model FLOP utilisation: the FLOP/s its forward and backward
passes need for the tokens it trained (6 x the parameters of every linear layer per
token, plus causal attention over each sequence it attends), against this CPU's fp32
peak measured here from a large matrix product with the same threads. Targets:
afm-trainer >= 2x TRL's best setting and >= 1.0x the plain loop. afm-trainer and the
plain loop run --rounds times, alternated, and their medians count (the host's speed
drifts by tens of percent between minutes).

- afm-trainer: `recipes/train_sft.sh 1 ...` exactly as a user runs it; step times are
  the gaps between the arrival of consecutive lines in its metrics.jsonl.
- TRL: SFTTrainer (packing off and on), in a virtual environment this script creates in
  .bench/trl-venv, so TRL's newer transformers cannot disturb verl's pins.
- plain loop: AdamW over 1,024-token packed rows, no checkpointing; the rows are plain
  concatenations (attention crosses sample boundaries, so its FLOPs count attention
  over 1,024 tokens), an upper bound of the same tokens.

All three train in fp32, afm-trainer's CPU default (config/device/cpu.yaml explains why).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(REPO, ".bench")
BATCH, MAX_LEN = 16, 1024
WORDS = (
    "the agent searched for the answer and found three documents about a river city whose "
    "mayor wrote code to test each plan before the reviewer approved it with a score of"
).split()


def make_data(path: str, n: int = 512, seed: int = 0, word_range: tuple[int, int] = (40, 700)) -> None:
    """Conversations of 2-6 messages of `word_range` words in all; by default 53-889 tokens (mean ~450),
    like real traces (~1.25 tokens a word with the tiny model's tokenizer)."""
    import pandas as pd

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        turns = rng.choice([2, 4, 6])
        budget = rng.randint(*word_range)
        messages = []
        for t in range(turns):
            words = max(3, budget // turns + rng.randint(-5, 5))
            text = " ".join(rng.choice(WORDS) for _ in range(words)) + f" {rng.randint(0, 9999)}."
            messages.append({"role": "user" if t % 2 == 0 else "assistant", "content": text})
        rows.append({"messages": messages})
    pd.DataFrame(rows).to_parquet(path)


def _median_rate(step_times: list[float], step_tokens: list[int], warmup: int) -> dict:
    times, tokens = step_times[warmup:], step_tokens[warmup:]
    return {
        "median_step_s": statistics.median(times),
        "tokens_per_s": sum(tokens) / sum(times),
        "steps_measured": len(times),
        "step_s": times,
    }


def tiny_model() -> str:
    """The tiny Qwen2 (afm_trainer.models.tiny) in .bench/tiny, built on first use."""
    model = os.path.join(WORK, "tiny")
    if not os.path.exists(os.path.join(model, "config.json")):
        from afm_trainer.models.tiny import build_tiny_model

        build_tiny_model(model, size="tiny")
    return model


def peak_flops(threads: int = 2, n: int = 2048, repeats: int = 10) -> float:
    """The best fp32 FLOP/s of an n x n matrix product on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats + 1):  # the first warms the caches and thread pool
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def training_flops_per_token(model_path: str, lengths: list[int]) -> float:
    """Forward + backward FLOPs per token for sequences of these lengths: 6 per weight of
    every linear layer (the LM head included) and 6 * layers * hidden * length for causal
    attention (QK^T and AV over the tokens before each one)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = 6 * config.num_hidden_layers * config.hidden_size
    return sum(6 * linear * n + attention * n * n for n in lengths) / sum(lengths)


def conversation_lengths(model_path: str, data: str) -> list[int]:
    import pandas as pd
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return [
        min(MAX_LEN, len(tokenizer.apply_chat_template([dict(m) for m in ms], tokenize=True)["input_ids"]))
        for ms in pd.read_parquet(data)["messages"]
    ]


def run_recipe(command: list[str], out: str, log_path: str, key: str) -> dict[int, tuple[float, dict]]:
    """Run a recipe writing OUT/metrics.jsonl into a fresh ``out``; for every step whose
    metrics line has ``key``: (time.perf_counter() when the line landed, the line's data)."""
    subprocess.run(["rm", "-rf", out])
    os.makedirs(out)
    metrics_path = os.path.join(out, "metrics.jsonl")
    arrivals: dict[int, tuple[float, dict]] = {}
    done = threading.Event()

    def watch():  # note when each step's metrics line lands
        offset = 0
        while not done.is_set():
            if os.path.exists(metrics_path):
                with open(metrics_path) as f:
                    f.seek(offset)
                    chunk = f.read()
                now = time.perf_counter()
                complete = chunk[: chunk.rfind("\n") + 1]
                offset += len(complete.encode())
                for line in complete.splitlines():
                    record = json.loads(line)
                    if key in record["data"]:
                        arrivals[record["step"]] = (now, record["data"])
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    time.sleep(0.1)
    done.set()
    watcher.join()
    if code != 0:
        raise SystemExit(f"afm-trainer run failed, see {log_path}")
    return arrivals


def bench_afm(
    model: str, data: str, steps: int, warmup: int, overrides: list[str], batch: int = BATCH, max_len: int = MAX_LEN
) -> dict:
    out = os.path.join(WORK, "afm_run")
    command = [
        "bash",
        os.path.join(REPO, "recipes", "train_sft.sh"),
        "1",
        out,
        f"MODEL={model}",
        f"TRAIN_FILES={data}",
        f"data.train_batch_size={batch}",
        f"data.max_length={max_len}",
        f"trainer.total_training_steps={steps}",
        "trainer.save_freq=-1",
        "checkpoint.save_contents=[model]",
        *overrides,
    ]
    arrivals = run_recipe(command, out, os.path.join(WORK, "afm_run.log"), "train/global_tokens")
    ordered = [(t, int(line["train/global_tokens"])) for t, line in (arrivals[s] for s in sorted(arrivals))]
    gaps = [b[0] - a[0] for a, b in zip(ordered, ordered[1:])]
    return _median_rate(gaps, [tokens for _, tokens in ordered[1:]], warmup)


TRL_WORKER = r"""
import json, sys, time, torch
import pandas as pd
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer
model_path, data_path, steps, packing, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
torch.set_num_threads(2)
tok = AutoTokenizer.from_pretrained(model_path)
rows = pd.read_parquet(data_path)
ds = Dataset.from_list([{"messages": [dict(m) for m in ms]} for ms in rows["messages"]])
marks = []
class Clock(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))
cfg = SFTConfig(output_dir=out, per_device_train_batch_size=16, max_steps=steps, max_length=1024, packing=packing,
                bf16=False, use_cpu=True, logging_steps=1000, save_strategy="no", report_to=[], learning_rate=1e-4,
                include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, gradient_checkpointing=False)
trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_path), args=cfg, train_dataset=ds,
                     processing_class=tok, callbacks=[Clock()])
trainer.train()
json.dump(marks, open(out + "/marks.json", "w"))
"""


def trl_python() -> str:
    venv = os.path.join(WORK, "trl-venv")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(os.path.join(venv, ".ready")):
        print("creating .bench/trl-venv (torch 2.13.0 from local disk, then trl)...", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", venv])
        subprocess.check_call([python, "-m", "pip", "install", "-q", "torch==2.13.0"])
        subprocess.check_call([python, "-m", "pip", "install", "-q", "trl", "datasets", "pandas", "pyarrow"])
        open(os.path.join(venv, ".ready"), "w").close()
    return python


def bench_trl(model: str, data: str, steps: int, warmup: int, packing: bool) -> dict:
    out = os.path.join(WORK, f"trl_run_packing{int(packing)}")
    os.makedirs(out, exist_ok=True)
    worker = os.path.join(WORK, "trl_worker.py")
    with open(worker, "w") as f:
        f.write(TRL_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    args = [trl_python(), worker, model, data, str(steps), "1" if packing else "0", out]
    with open(out + ".log", "w") as log:
        if subprocess.call(args, stdout=log, stderr=subprocess.STDOUT, env=env) != 0:
            raise SystemExit(f"TRL run failed, see {out}.log")
    with open(os.path.join(out, "marks.json")) as f:
        marks = json.load(f)
    gaps = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    tokens = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    return _median_rate(gaps, tokens, warmup)


def bench_plain(
    model_path: str, data: str, steps: int, warmup: int, rows_per_step: int | None = None, row_len: int = MAX_LEN
) -> dict:
    """AdamW steps over rows of `row_len` tokens cut from the concatenated conversations;
    by default as many rows a step as the other contenders' 16 conversations hold."""
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="sdpa")
    stream = []
    for messages in pd.read_parquet(data)["messages"]:
        stream += tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=True)["input_ids"]
    if rows_per_step is None:  # same tokens a step as the others
        rows_per_step = max(1, round(len(stream) / len(pd.read_parquet(data)) * BATCH / row_len))
    rows = torch.tensor(stream[: len(stream) // row_len * row_len]).view(-1, row_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times, tokens = [], []
    for step in range(steps):
        batch = rows[(step * rows_per_step) % len(rows) :][:rows_per_step]
        start = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        tokens.append(batch.numel())
    return _median_rate(times, tokens, warmup)


def median_round(rounds: list[dict]) -> dict:
    """The round with the median tokens/s (the lower middle of an even count), every round's rate beside it."""
    rates = [r["tokens_per_s"] for r in rounds]
    middle = sorted(rounds, key=lambda r: r["tokens_per_s"])[(len(rounds) - 1) // 2]
    return {**middle, "rounds": rates}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--warmup", type=int, default=4, help="first steps left out of the figures")
    parser.add_argument("--skip_trl", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of afm-trainer and the plain loop, alternated")
    parser.add_argument("--ours", nargs="*", default=[], help="extra Hydra overrides for the afm-trainer run")
    args = parser.parse_args()
    os.makedirs(WORK, exist_ok=True)
    model, data = tiny_model(), os.path.join(WORK, "convs.parquet")
    if not os.path.exists(data):
        make_data(data)

    # The peak is measured before each contender and after the last: the best the host
    # showed in this run (its speed drifts with its neighbours).
    peaks = [peak_flops()]
    results = {}
    print("afm-trainer (recipes/train_sft.sh, project defaults), round 1...", flush=True)
    afm_rounds = [bench_afm(model, data, args.steps, args.warmup, args.ours)]
    if not args.skip_trl:
        for packing in (False, True):
            print(f"TRL SFTTrainer, packing={packing}...", flush=True)
            peaks.append(peak_flops())
            # packing makes TRL's steps ~15x longer on CPU: fewer of them suffice for a median
            steps, warmup = (min(args.steps, 6), min(args.warmup, 2)) if packing else (args.steps, args.warmup)
            results[f"TRL packing={packing}"] = bench_trl(model, data, steps, warmup, packing)
    # afm-trainer and the plain loop are close: they alternate, so drift hits both.
    plain_rounds = []
    for round_ in range(args.rounds):
        if round_:
            print(f"afm-trainer, round {round_ + 1}...", flush=True)
            afm_rounds.append(bench_afm(model, data, args.steps, args.warmup, args.ours))
        print(f"plain PyTorch loop, packed rows, round {round_ + 1}...", flush=True)
        peaks.append(peak_flops())
        plain_rounds.append(bench_plain(model, data, args.steps, args.warmup))
    peaks.append(peak_flops())
    results["afm-trainer"], results["plain loop"] = median_round(afm_rounds), median_round(plain_rounds)
    peak = max(peaks)
    print(
        f"\nfp32 peak of this CPU, 2 threads (2048^3 matrix products): {peak / 1e9:.1f} GFLOP/s "
        f"(measured {len(peaks)} times in this run: {min(peaks) / 1e9:.0f}-{peak / 1e9:.0f})"
    )

    per_sample = training_flops_per_token(model, conversation_lengths(model, data))
    packed_rows = training_flops_per_token(model, [MAX_LEN])
    for name, r in results.items():
        r["flops_per_token"] = packed_rows if name == "plain loop" else per_sample
        r["mfu"] = r["tokens_per_s"] * r["flops_per_token"] / peak
    ours = results["afm-trainer"]["tokens_per_s"]
    print("\n| contender | median step (s) | tokens/s | MFU (fp32) | afm-trainer / it |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['median_step_s']:.2f} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | "
            f"{ours / r['tokens_per_s']:.2f}x |"
        )
    print(
        f"\nmodel FLOPs per token: {per_sample / 1e6:.1f}M per conversation, {packed_rows / 1e6:.1f}M in 1,024-token rows"
    )
    trl = [r["tokens_per_s"] for n, r in results.items() if n.startswith("TRL")]
    if trl:
        print(f"afm-trainer vs TRL's best: {ours / max(trl):.2f}x (target >= 2x)")
    print(f"afm-trainer vs plain loop: {ours / results['plain loop']['tokens_per_s']:.2f}x (target >= 1.0x; medians)")
    pairs = zip(results["afm-trainer"]["rounds"], results["plain loop"]["rounds"])
    print("  round by round: " + ", ".join(f"{a:,.0f} vs {b:,.0f} ({a / b:.2f}x)" for a, b in pairs))
    results["peak_flops"] = peak
    results["peak_flops_measured"] = peaks
    with open(os.path.join(WORK, "bench_sft.json"), "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
