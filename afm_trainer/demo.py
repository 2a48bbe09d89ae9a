"""`make demo`: build the tiny model, train it with verl's SFT on the bundled data, and
show what it learned.

    python -m afm_trainer.demo --out out/demo [--nproc 1] [--size tiny] [--epochs 3]

Every stage writes into ``--out`` and is skipped when its output is already complete,
so an interrupted demo resumes where it stopped (training itself resumes from its last
checkpoint). Ends with a table of validation loss and exact-match accuracy per skill,
before and after training, and a loss-curve PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict

import pandas as pd

from afm_trainer.checkpoints import latest_complete
from afm_trainer.data.starter import write_starter_dataset
from afm_trainer.metrics import read_metrics
from afm_trainer.models.tiny import build_tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def evaluate(model_dir: str, val_path: str) -> dict:
    """Validation loss on answers, and exact-match accuracy of greedy answers per skill."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from afm_trainer.eval.lm import assistant_loss, extract_answer, generate

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rows = pd.read_parquet(val_path)
    conversations = [[dict(m) for m in messages] for messages in rows["messages"]]
    completions = generate(model, tokenizer, [c[:-1] for c in conversations])
    by_skill = defaultdict(lambda: [0, 0])
    for skill, conversation, completion in zip(rows["skill"], conversations, completions):
        gold = extract_answer(conversation[-1]["content"])
        by_skill[skill][0] += int(extract_answer(completion) == gold)
        by_skill[skill][1] += 1
    return {
        "loss": assistant_loss(model, tokenizer, conversations),
        "accuracy": {skill: right / total for skill, (right, total) in sorted(by_skill.items())},
        "example": {"prompt": conversations[0][0]["content"], "completion": completions[0]},
    }


def plot_loss(metrics: dict[int, dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s, m in metrics.items() if "train/loss" in m]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [metrics[s]["train/loss"] for s in steps], label="train loss")
    val = [(s, m["val/loss"]) for s, m in metrics.items() if "val/loss" in m]
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("afm-trainer demo: SFT of the tiny model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=120)
    os.replace(path + ".tmp.png", path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/demo")
    parser.add_argument("--nproc", type=int, default=1, help="training ranks (1 is fastest on 2 cores)")
    parser.add_argument("--size", default="tiny", help="tiny-model size (nano, tiny, small)")
    parser.add_argument("--n_train", type=int, default=3000)
    parser.add_argument("--n_val", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=2e-3)
    args, overrides = parser.parse_known_args(argv)
    started = time.time()
    out = os.path.abspath(args.out)
    model_dir, data_dir, sft_dir = (os.path.join(out, d) for d in ("model", "data", "sft"))

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        build_tiny_model(model_dir, size=args.size)
    train_path, val_path = os.path.join(data_dir, "train.parquet"), os.path.join(data_dir, "val.parquet")
    if not (os.path.isfile(train_path) and os.path.isfile(val_path)):
        write_starter_dataset(data_dir, args.n_train, args.n_val)
    print(f"[demo] model {model_dir}, data {data_dir} ({args.n_train} train / {args.n_val} val)", flush=True)

    before = evaluate(model_dir, val_path)
    command = [
        "bash", os.path.join(REPO, "recipes", "train_sft.sh"), str(args.nproc), sft_dir,
        f"MODEL={model_dir}", f"TRAIN_FILES={train_path}", f"VAL_FILES={val_path}",
        f"optim.lr={args.lr}", f"trainer.total_epochs={args.epochs}", "trainer.experiment_name=demo",
        *overrides,
    ]  # fmt: skip
    if subprocess.call(command) != 0:
        print("error: training failed (see the log above); re-run `make demo` to resume", file=sys.stderr)
        return 1
    final = latest_complete(sft_dir)
    after = evaluate(os.path.join(final, "huggingface"), val_path)

    plot_path = os.path.join(out, "loss.png")
    plot_loss(read_metrics(sft_dir), plot_path)
    results = {"checkpoint": final, "before": before, "after": after, "minutes": (time.time() - started) / 60}
    with open(os.path.join(out, "results.json.tmp"), "w") as f:
        json.dump(results, f, indent=2)
    os.replace(os.path.join(out, "results.json.tmp"), os.path.join(out, "results.json"))

    print("\n| metric | before | after |\n|---|---|---|")
    print(f"| validation loss (answer tokens) | {before['loss']:.3f} | {after['loss']:.3f} |")
    for skill in after["accuracy"]:
        print(f"| accuracy: {skill} | {before['accuracy'][skill]:.1%} | {after['accuracy'][skill]:.1%} |")
    print(f"\nexample: {after['example']['prompt']!r} -> {after['example']['completion']!r}")
    print(f"checkpoint: {final}\nloss curve: {plot_path}\nresults: {out}/results.json")
    print(f"demo finished in {results['minutes']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
