"""DPO throughput on this machine: afm-trainer's preference recipe vs TRL's DPOTrainer.

    python benchmarks/bench_dpo.py [--steps 14] [--warmup 4] [--skip_trl] [--ours KEY=VALUE ...]

Same model (the tiny Qwen2 of bench_sft.py, 4.2M parameters), same data (256 preference
pairs: a prompt of 1 or 3 messages, ~30-300 tokens, and a chosen and a rejected answer of
~20-200 tokens each), same global batch (8 pairs a step), same loss (sigmoid DPO, beta
0.1, learning rate 1e-6), max length 1024, reference log-probs precomputed once before
the first step on both sides, all in one run. Prints trained pairs per second for each
contender and the ratio. Target of the preference-training issue (16): afm-trainer
>= 1.5x TRL.

- afm-trainer: `recipes/train_dpo.sh 1 ...` exactly as a user runs it, project defaults
  (dynamic batching up to 8,192 tokens a micro-batch: here a step's 8 pairs are one
  packed micro-batch, no padding); step times are the gaps between the arrival of
  consecutive lines in its metrics.jsonl.
- TRL: DPOTrainer with precompute_ref_log_probs=True, one padded batch of 8 pairs a step
  (16 rows, no accumulation), logging every step, in the virtual environment that
  bench_sft.py creates in .bench/trl-venv; step times are the gaps between `on_step_end`
  callbacks. It reads the same pairs from a JSONL in its conversational format
  (prompt/chosen/rejected message lists), held in memory, so its reference log-probs
  are never read from a cache.

The first --warmup + 1 steps of each are not timed (the first has no earlier line or
callback to measure from), nor is anything before them: the reference precompute, the
model load and the tokenisation are not in the figures; the time from launch to the
start of training, which holds them, is printed beside. Tokens per second is pairs per
second times the mean tokens of a pair (prompt + chosen plus prompt + rejected, as
afm-trainer tokenises them), the same factor for both. Both train in fp32, afm-trainer's
CPU default (config/device/cpu.yaml explains why), with one torch thread per CPU this
process may use.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

from bench_sft import REPO, WORDS, WORK, _median_rate, run_recipe, tiny_model, trl_python

PAIRS, BATCH, MAX_LEN, BETA = 256, 8, 1024, 0.1
THREADS = len(os.sched_getaffinity(0))  # what the recipe gives its one rank (recipes/common.py)


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + f" {rng.randint(0, 9999)}."


def make_pairs(parquet: str, jsonl: str, n: int = PAIRS, seed: int = 0) -> None:
    """``n`` pairs, in afm-trainer's pair format (parquet, PAIR_SCHEMA) and in TRL's
    conversational one (JSONL). ~1.4 tokens a word with this tokenizer, plus the number
    and the chat template's tokens: prompts of 12-176 words come to ~30-300 tokens,
    answers of 7-118 words to ~20-200."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from afm_trainer.data.pairs import PAIR_SCHEMA

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.randint(12, 176)
        if rng.random() < 0.3:  # a short exchange before the question
            split = [max(3, words // 3 + rng.randint(-3, 3)) for _ in range(2)]
            split.append(max(3, words - sum(split)))
            prompt = [{"role": role, "content": _text(rng, w)} for role, w in zip(("user", "assistant", "user"), split)]
        else:
            prompt = [{"role": "user", "content": _text(rng, words)}]
        chosen = [{"role": "assistant", "content": _text(rng, rng.randint(7, 118))}]
        rejected = [{"role": "assistant", "content": _text(rng, rng.randint(7, 118))}]
        rows.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "pair_id": f"bench-{i}",
                "source": "bench",
                "weight": 1.0,
            }
        )
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA), parquet)
    with open(jsonl, "w") as f:
        for row in rows:
            f.write(json.dumps({k: row[k] for k in ("prompt", "chosen", "rejected")}) + "\n")


def pair_tokens(model: str, parquet: str) -> dict:
    """Token counts of the pairs, with the model's chat template, as the recipe counts them."""
    from transformers import AutoTokenizer

    from afm_trainer.data.pair_dataset import pair_conversations, read_pairs

    tokenizer = AutoTokenizer.from_pretrained(model)

    def count(messages):
        return len(tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"])

    prompts, answers, sequences = [], [], []
    for pair in read_pairs([parquet]):
        prompt = count(pair["prompt"])
        lengths = [count(c) for c in pair_conversations(pair)]
        prompts.append(prompt)
        answers += [n - prompt for n in lengths]
        sequences += lengths
    return {
        "prompt_tokens": (min(prompts), max(prompts)),
        "answer_tokens": (min(answers), max(answers)),
        "mean_tokens_per_pair": 2 * statistics.mean(sequences),
        "longest_sequence": max(sequences),
    }


def _pair_rate(gaps: list[float], warmup: int) -> dict:
    result = _median_rate(gaps, [BATCH] * len(gaps), warmup)
    result["pairs_per_s"] = result.pop("tokens_per_s")
    return result


def bench_afm(model: str, pairs: str, steps: int, warmup: int, overrides: list[str]) -> dict:
    out = os.path.join(WORK, "afm_dpo_run")
    command = [
        "bash",
        os.path.join(REPO, "recipes", "train_dpo.sh"),
        "1",
        out,
        f"MODEL={model}",
        f"TRAIN_FILES={pairs}",
        f"data.train_batch_size={BATCH}",
        f"data.max_length={MAX_LEN}",
        f"trainer.total_training_steps={steps}",
        f"trainer.total_epochs={-(-steps * BATCH // PAIRS)}",
        "dpo.loss_type=sigmoid",
        f"dpo.beta={BETA}",
        "trainer.save_freq=-1",
        "checkpoint.save_contents=[model]",
        *overrides,
    ]
    launched = time.time()
    arrivals = run_recipe(command, out, os.path.join(WORK, "afm_dpo_run.log"), "train/loss")
    times = [arrivals[s][0] for s in sorted(arrivals)]
    if len(times) < warmup + 2:
        raise SystemExit(f"afm-trainer logged {len(times)} steps: too few for --warmup {warmup}")
    result = _pair_rate([b - a for a, b in zip(times, times[1:])], warmup)
    # The reference log-probs are written once computed, just before the first step.
    reference = os.path.join(out, "reference", "train.parquet")
    result["startup_s"] = os.path.getmtime(reference) - launched
    result["setting"] = "recipes/train_dpo.sh 1 OUT " + " ".join(command[4:])
    return result


TRL_WORKER = r"""
import json, os, sys, time, torch, transformers, trl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer
model_path, data_path, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
tok = AutoTokenizer.from_pretrained(model_path)
with open(data_path) as f:  # in memory: no datasets cache file, so the reference is computed every run
    ds = Dataset.from_list([json.loads(line) for line in f])
marks, begin = [], []
class Clock(TrainerCallback):
    def on_train_begin(self, args, state, control, **kw):
        begin.append(time.time())
    def on_step_end(self, args, state, control, **kw):
        marks.append(time.perf_counter())
cfg = DPOConfig(output_dir=out, per_device_train_batch_size=8, gradient_accumulation_steps=1, max_steps=steps,
                beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=True, max_length=1024, learning_rate=1e-6,
                bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False, logging_steps=1,
                save_strategy="no", report_to=[], dataloader_num_workers=0)
model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
start = time.perf_counter()
trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
built = time.perf_counter() - start
trainer.train()
setting = {k: getattr(cfg, k, None) for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_steps",
           "beta", "loss_type", "precompute_ref_log_probs", "precompute_ref_batch_size", "max_length", "learning_rate",
           "bf16", "use_cpu", "gradient_checkpointing", "padding_free", "logging_steps", "dataloader_num_workers")}
versions = {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__}
json.dump({"marks": marks, "train_begin": begin[0], "construct_s": built, "setting": setting, "versions": versions,
           "threads": torch.get_num_threads()}, open(os.path.join(out, "marks.json"), "w"))
"""


def bench_trl(model: str, pairs_jsonl: str, steps: int, warmup: int) -> dict:
    out = os.path.join(WORK, "trl_dpo_run")
    subprocess.run(["rm", "-rf", out])
    os.makedirs(out)
    worker = os.path.join(WORK, "trl_dpo_worker.py")
    with open(worker, "w") as f:
        f.write(TRL_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    args = [trl_python(), worker, model, pairs_jsonl, str(steps), out]
    launched = time.time()
    with open(out + ".log", "w") as log:
        if subprocess.call(args, stdout=log, stderr=subprocess.STDOUT, env=env) != 0:
            raise SystemExit(f"TRL run failed, see {out}.log")
    with open(os.path.join(out, "marks.json")) as f:
        run = json.load(f)
    marks = run["marks"]
    if len(marks) < warmup + 2:
        raise SystemExit(f"TRL logged {len(marks)} steps: too few for --warmup {warmup}")
    result = _pair_rate([b - a for a, b in zip(marks, marks[1:])], warmup)
    result["startup_s"] = run["train_begin"] - launched
    result["trl_construct_s"] = run["construct_s"]
    result["setting"] = run["setting"]
    result["versions"] = run["versions"]
    result["threads"] = run["threads"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--warmup", type=int, default=4, help="first steps left out of the figures")
    parser.add_argument("--skip_trl", action="store_true")
    parser.add_argument("--ours", nargs="*", default=[], help="extra Hydra overrides for the afm-trainer run")
    args = parser.parse_args()
    os.makedirs(WORK, exist_ok=True)
    model = tiny_model()
    pairs, pairs_jsonl = os.path.join(WORK, "pairs.parquet"), os.path.join(WORK, "pairs.jsonl")
    if not (os.path.exists(pairs) and os.path.exists(pairs_jsonl)):
        make_pairs(pairs, pairs_jsonl)
    tokens = pair_tokens(model, pairs)
    print(
        f"{PAIRS} pairs: prompts {tokens['prompt_tokens'][0]}-{tokens['prompt_tokens'][1]} tokens, answers "
        f"{tokens['answer_tokens'][0]}-{tokens['answer_tokens'][1]}, {tokens['mean_tokens_per_pair']:.0f} tokens "
        f"a pair on average (both sequences), longest sequence {tokens['longest_sequence']}",
        flush=True,
    )

    results = {}
    print("afm-trainer (recipes/train_dpo.sh, project defaults)...", flush=True)
    results["afm-trainer"] = bench_afm(model, pairs, args.steps, args.warmup, args.ours)
    if not args.skip_trl:
        print("TRL DPOTrainer, precompute_ref_log_probs=True...", flush=True)
        results["TRL DPOTrainer"] = bench_trl(model, pairs_jsonl, args.steps, args.warmup)
    for r in results.values():
        r["tokens_per_s"] = r["pairs_per_s"] * tokens["mean_tokens_per_pair"]

    ours = results["afm-trainer"]["pairs_per_s"]
    print(
        "\n| contender | median step (s) | pairs/s | tokens/s | launch to training (s) | afm-trainer / it |"
        "\n|---|---|---|---|---|---|"
    )
    for name, r in results.items():
        print(
            f"| {name} | {r['median_step_s']:.2f} | {r['pairs_per_s']:.1f} | {r['tokens_per_s']:,.0f} "
            f"| {r['startup_s']:.1f} | {ours / r['pairs_per_s']:.2f}x |"
        )
    print(f"\nsteps timed: {results['afm-trainer']['steps_measured']} of {args.steps} (warmup {args.warmup})")
    print(f"afm-trainer: {results['afm-trainer']['setting']}")
    if "TRL DPOTrainer" in results:
        trl = results["TRL DPOTrainer"]
        print(
            f"TRL {trl['versions']['trl']} (transformers {trl['versions']['transformers']}): DPOConfig {trl['setting']}"
        )
        print(f"TRL DPOTrainer(...) construction, tokenisation + reference precompute: {trl['trl_construct_s']:.1f} s")
        print(f"\nafm-trainer vs TRL DPOTrainer: {ours / trl['pairs_per_s']:.2f}x pairs/s (target >= 1.5x)")
    import torch

    print(
        f"environment: {os.cpu_count()} CPUs ({THREADS} usable), torch {torch.__version__}; torch threads: "
        f"afm-trainer {THREADS} (OMP_NUM_THREADS from the recipe)"
        + (f", TRL {results['TRL DPOTrainer']['threads']}" if "TRL DPOTrainer" in results else "")
    )
    with open(os.path.join(WORK, "bench_dpo.json"), "w") as f:
        json.dump({"pairs": tokens, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
