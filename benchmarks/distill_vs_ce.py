"""Distillation (seed 001's alpha * CE + beta * KL) against CE alone, at the same budget.

    python benchmarks/distill_vs_ce.py --teacher TEACHER_HF_DIR [--out out/demo-afm] [--epochs 1] \
        [--lr 2e-3] [--alpha 0.7] [--beta 0.3] [--k 8] [--divergence forward_kl]

Needs `make demo-afm` first (its world, tiny model and AFM data) and a teacher trained on
the same chains with the same tokenizer, e.g. the `small` model (21M parameters, 5x the
student):

    python -m afm_trainer.models.tiny --out out/demo-afm/teacher_small_init --size small
    bash recipes/train_sft.sh 2 out/demo-afm/teacher_small MODEL=out/demo-afm/teacher_small_init \
        TRAIN_FILES=out/demo-afm/embedded/data/afm/train.parquet VAL_FILES=out/demo-afm/embedded/data/afm/val.parquet \
        optim.lr=1e-3 trainer.total_epochs=3

Then, on 2 gloo ranks, from the demo's untrained tiny model, with the same data, epochs,
learning rate and batch: the AFM trained with CE alone (recipes/train_sft.sh) and with
distillation (recipes/train_distill.sh, the teacher's top-k added once by
add_teacher_topk.py). Prints, for the teacher and both students: the validation
cross-entropy per token of the AFM's chains, and held-out accuracy on the world's 110
tasks, greedy and sampled at temperature 1 (two runs), each chain's program run in the
sandbox. Everything is written under OUT/distill_vs_ce/ and reused when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(recipe: str, out: str, args: list[str]) -> str:
    from afm_trainer.checkpoints import latest_export

    model, exists = latest_export(out)
    if not exists:
        subprocess.run(["bash", os.path.join(REPO, "recipes", f"{recipe}.sh"), "2", out, *args], check=True)
        model, exists = latest_export(out)
    return model


def scores(agent, val_file: str, items: list[dict]) -> dict:
    """An AFM's validation CE per token, and its held-out accuracy greedy and sampled."""
    import pandas as pd

    from afm_trainer.data.convert import messages_column
    from afm_trainer.eval.agent_chain import run_afm, summary
    from afm_trainer.eval.lm import assistant_loss

    frame = pd.read_parquet(val_file)
    conversations = [
        [{"role": m["role"], "content": m["content"]} for m in messages]
        for messages in frame[messages_column(frame.columns)]
    ]
    out = {"val_ce": round(assistant_loss(agent.model, agent.tokenizer, conversations), 4)}
    out["greedy"] = summary(run_afm(agent, items), 0)["accuracy"]
    out["sampled"] = [summary(run_afm(agent, items, temperature=1.0, seed=s), 0)["accuracy"] for s in (0, 1)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="the teacher's HF model folder")
    parser.add_argument("--out", default="out/demo-afm", help="the OUT_DIR of make demo-afm")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", default="2e-3")
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--beta", type=float, default=0.3)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--divergence", default="forward_kl")
    args = parser.parse_args()

    from afm_trainer.data.distill_dataset import add_teacher_topk
    from afm_trainer.demo import load_settings
    from afm_trainer.demo.afm import embedded_paths, heldout_items, load_agent

    paths = embedded_paths(args.out)
    data = os.path.join(paths["data"], "afm")
    if not os.path.isfile(os.path.join(data, "train.parquet")):
        print(f"error: no AFM data in {data} (run `make demo-afm` first)", file=sys.stderr)
        return 2
    work = os.path.join(os.path.abspath(args.out), "distill_vs_ce")
    os.makedirs(os.path.join(work, "data"), exist_ok=True)
    with_teacher = {}
    for split in ("train", "val"):
        with_teacher[split] = os.path.join(work, "data", f"{split}.parquet")
        if not os.path.isfile(with_teacher[split]):
            add_teacher_topk(os.path.join(data, f"{split}.parquet"), with_teacher[split], args.teacher, args.k)
    budget = [f"optim.lr={args.lr}", f"trainer.total_epochs={args.epochs}", "data.train_batch_size=16"]
    models = {
        "teacher": args.teacher,
        "CE alone": train(
            "train_sft",
            os.path.join(work, f"ce_{args.epochs}ep"),
            [f"MODEL={paths['model']}", f"TRAIN_FILES={data}/train.parquet", f"VAL_FILES={data}/val.parquet", *budget],
        ),
        f"{args.alpha} CE + {args.beta} {args.divergence}": train(
            "train_distill",
            os.path.join(work, f"distill_{args.epochs}ep_{args.divergence}_{args.alpha}_{args.beta}"),
            [
                f"MODEL={paths['model']}",
                f"TRAIN_FILES={with_teacher['train']}",
                f"VAL_FILES={with_teacher['val']}",
                *budget,
                f"distill.alpha={args.alpha}",
                f"distill.beta={args.beta}",
                f"distill.divergence={args.divergence}",
            ],
        ),
    }
    settings, items = load_settings("afm"), heldout_items(paths)
    budget = settings["evaluation"]["max_new_tokens"]["afm"]
    results = {
        name: scores(load_agent(model, budget), os.path.join(data, "val.parquet"), items)
        for name, model in models.items()
    }
    print(f"{'':34s} {'val CE/token':>12s} {'greedy':>8s} {'sampled (2 runs)':>18s}")
    for name, r in results.items():
        sampled = ", ".join(f"{a:.1%}" for a in r["sampled"])
        print(f"{name:34s} {r['val_ce']:>12.4f} {r['greedy']:>8.1%} {sampled:>18s}")
    with open(os.path.join(work, f"results_{args.epochs}ep.json"), "w") as f:
        json.dump({"settings": vars(args), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
