"""Seed 001's ablation on the demo world: what each training technique adds to the AFM.

    python benchmarks/ablate_afm.py [--out out/demo-afm] [--steps 64] [--teacher HF_DIR]

Needs `make demo-afm` first (its world of agent chains and its untrained tiny model).
Six AFMs, each adding one technique to the row above, each trained from the same tiny
model for the same budget (--steps optimizer steps of 16 chains, learning rate 2e-3,
cosine; 2 gloo ranks), each scored on the world's 110 held-out tasks (the chain's last
program run in the sandbox on the task's input), greedy and sampled at temperature 1:

    base            whole chains, agents named in plain text ("Coder: ..."), every chain
                    kept (the teacher's wrong ones too), shuffled, cross-entropy
    + filtering     chains the sandbox failed dropped (make_afm_data.py --min_score 0.5)
    + role tokens   agents marked by role tokens (<|coder|>), as make_afm_data.py writes
    + curriculum    easy first by task difficulty, 3 stages (data.curriculum.key=difficulty)
    + augmentation  every chain's task again with other inputs (augment_chains.py --copies 1)
    + distillation  0.7 CE + 0.3 forward KL to a teacher's top-8 (train_distill.sh)

The teacher is the `small` model (21M parameters) trained 3 epochs on the same chains,
trained here unless --teacher names one. Prints the table (with each row's change from
the row above, and the standard error of a held-out accuracy), writes it with the
per-row figures to OUT/ablate_afm/ablation_STEPSsteps.{md,json}, and the bars to
ablation_STEPSsteps.png. Each step is reused when its output is complete, so a re-run resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

# sibling benchmarks: python puts this script's folder first on sys.path
from distill_vs_ce import scores, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROWS = ("base", "+ filtering", "+ role tokens", "+ curriculum", "+ augmentation", "+ distillation")
ROLE_NAMES = {"<|planner|>": "Planner: ", "<|coder|>": "Coder: ", "<|reviewer|>": "Reviewer: "}
PLAIN_ROLE = re.compile(r"(?:(?<=\n)|^)(Planner|Coder|Reviewer): ")


def plain_roles(source: str, target: str) -> None:
    """The AFM's set with each role token written as the agent's name in plain text."""
    import pandas as pd

    from afm_trainer.data.convert import messages_column

    frame = pd.read_parquet(source)

    def rename(messages):
        out = []
        for m in messages:
            content = m["content"]
            for token, name in ROLE_NAMES.items():
                content = content.replace(token, name)
            out.append({**m, "content": content})
        return out

    key = messages_column(frame.columns)
    frame[key] = frame[key].map(rename)
    frame.to_parquet(target + ".tmp.parquet")
    os.replace(target + ".tmp.parquet", target)


def role_tokens_of(text: str) -> str:
    """A plain-text chain read back with role tokens, so both kinds are scored alike."""
    return PLAIN_ROLE.sub(lambda m: f"<|{m.group(1).lower()}|>", text)


def chain_data(work: str, name: str, chains: str, min_score: float | None, plain: bool) -> str:
    """DATA folder with {train,val}.parquet of whole chains (make_afm_data.py's afm/ set)."""
    from afm_trainer.data.agent_chains import write_chain_data

    data = os.path.join(work, "data", name)
    if not os.path.isfile(os.path.join(data, "report.json")):
        report = write_chain_data(chains, data, min_score=min_score)
        if plain:
            for split in ("train", "val"):
                path = os.path.join(data, "afm", f"{split}.parquet")
                plain_roles(path, path)
        with open(os.path.join(data, "report.json"), "w") as f:
            json.dump(report, f, indent=2, default=str)
    return os.path.join(data, "afm")


def evaluate(model_dir: str, items: list[dict], val_file: str, settings: dict, plain: bool) -> dict:
    from afm_trainer.demo.afm import load_agent
    from afm_trainer.eval.agent_chain import Agent

    class PlainRoleAgent(Agent):
        """Its turns read back with role tokens, so both kinds of chain are scored alike."""

        def call(self, *args, **kwargs):
            return [(role_tokens_of(text), p, g) for text, p, g in super().call(*args, **kwargs)]

    agent = load_agent(model_dir, settings["evaluation"]["max_new_tokens"]["afm"])
    if plain:
        agent = PlainRoleAgent(agent.model, agent.tokenizer, agent.max_new_tokens)
    return scores(agent, val_file, items)


def teacher_model(args, paths: dict, data: str, work: str) -> str:
    if args.teacher:
        return args.teacher
    from afm_trainer.models.tiny import build_tiny_model

    init = os.path.join(work, "teacher_init")
    if not os.path.isfile(os.path.join(init, "config.json")):
        build_tiny_model(init, size="small")
    return train(
        "train_sft",
        os.path.join(work, "teacher"),
        [
            f"MODEL={init}",
            f"TRAIN_FILES={data}/train.parquet",
            f"VAL_FILES={data}/val.parquet",
            "optim.lr=1e-3",
            "trainer.total_epochs=3",
        ],
    )


def write_outputs(work: str, results: dict, args) -> list[str]:
    n = results["items"]
    lines = [
        f"AFM ablation on the demo world: {n} held-out tasks, {args.steps} steps of 16 chains per row, "
        f"lr {args.lr}; standard error of one accuracy near 50%: {math.sqrt(0.25 / n):.1%}",
        "",
        "| row | greedy | change | sampled T=1 (2 runs) | change | val CE/token |",
        "|---|---|---|---|---|---|",
    ]
    previous = None
    for name in ROWS:
        r = results["rows"][name]
        mean = sum(r["sampled"]) / len(r["sampled"])
        greedy_change = "" if previous is None else f"{(r['greedy'] - previous[0]) * 100:+.1f}"
        sampled_change = "" if previous is None else f"{(mean - previous[1]) * 100:+.1f}"
        sampled = ", ".join(f"{a:.1%}" for a in r["sampled"])
        lines.append(
            f"| {name} | {r['greedy']:.1%} | {greedy_change} | {sampled} | {sampled_change} | {r['val_ce']:.4f} |"
        )
        previous = (r["greedy"], mean)
    lines += [
        "",
        "Changes are in points, each row against the row above. Validation CE: on each row's own validation "
        "chains (plain-text agent names in the first two rows, role tokens after).",
    ]
    name = os.path.join(work, f"ablation_{args.steps}steps")
    with open(name + ".md.tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(name + ".md.tmp", name + ".md")
    with open(name + ".json.tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(name + ".json.tmp", name + ".json")
    plot(name + ".png", results)
    return lines


def plot(path: str, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [results["rows"][name] for name in ROWS]
    x = range(len(ROWS))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar([i - 0.2 for i in x], [r["greedy"] for r in rows], 0.4, label="greedy", color="tab:blue")
    sampled = [sum(r["sampled"]) / len(r["sampled"]) for r in rows]
    ax.bar([i + 0.2 for i in x], sampled, 0.4, label="sampled T=1 (mean of 2)", color="tab:orange")
    ax.set_xticks(list(x), ROWS, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"AFM ablation, {results['steps']} steps per row", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/demo-afm", help="the OUT_DIR of make demo-afm")
    parser.add_argument("--steps", type=int, default=64, help="optimizer steps per row")
    parser.add_argument("--lr", default="2e-3")
    parser.add_argument("--teacher", default=None, help="the teacher's HF folder (default: trained here)")
    args = parser.parse_args()

    from afm_trainer.data.distill_dataset import add_teacher_topk
    from afm_trainer.demo import load_settings
    from afm_trainer.demo.afm import embedded_paths, heldout_items
    from afm_trainer.world.augment import augment_chains

    paths = embedded_paths(args.out)
    chains = os.path.join(paths["world"], "traces", "agent_chain.jsonl")
    if not (os.path.isfile(chains) and os.path.isfile(os.path.join(paths["model"], "config.json"))):
        print(f"error: no demo world or model under {paths['root']} (run `make demo-afm` first)", file=sys.stderr)
        return 2
    work = os.path.join(os.path.abspath(args.out), "ablate_afm")
    os.makedirs(work, exist_ok=True)
    heldout = os.path.join(paths["world"], "heldout", "algorithmic.jsonl")
    augmented = os.path.join(work, "chains_augmented.jsonl")
    if not os.path.isfile(augmented):
        print(augment_chains(chains, augmented, copies=1, exclude=heldout), flush=True)

    data = {
        "base": chain_data(work, "all_plain", chains, None, plain=True),
        "+ filtering": chain_data(work, "filtered_plain", chains, 0.5, plain=True),
        "+ role tokens": chain_data(work, "filtered", chains, 0.5, plain=False),
        "+ augmentation": chain_data(work, "augmented", augmented, 0.5, plain=False),
    }
    data["+ curriculum"] = data["+ role tokens"]
    teacher = teacher_model(args, paths, data["+ role tokens"], work)
    distill_data = os.path.join(work, "data", "augmented_teacher")
    os.makedirs(distill_data, exist_ok=True)
    for split in ("train", "val"):
        target = os.path.join(distill_data, f"{split}.parquet")
        if not os.path.isfile(target):
            add_teacher_topk(os.path.join(data["+ augmentation"], f"{split}.parquet"), target, teacher, 8)
    data["+ distillation"] = distill_data

    budget = [
        f"optim.lr={args.lr}",
        f"trainer.total_training_steps={args.steps}",
        "trainer.total_epochs=1000",  # the steps decide
        "data.train_batch_size=16",
    ]
    curriculum = ["data.curriculum.key=difficulty", "data.curriculum.stages=3"]
    settings, items = load_settings("afm"), heldout_items(paths)
    results = {"items": len(items), "steps": args.steps, "lr": args.lr, "teacher": teacher, "rows": {}}
    for i, name in enumerate(ROWS):
        folder = os.path.join(work, f"{i}_{name.strip('+ ').replace(' ', '_')}_{args.steps}steps")
        recipe = "train_distill" if name == "+ distillation" else "train_sft"
        extra = curriculum if i >= ROWS.index("+ curriculum") else []
        if name == "+ distillation":
            extra = [*extra, "distill.alpha=0.7", "distill.beta=0.3", "distill.divergence=forward_kl"]
        files = [f"TRAIN_FILES={data[name]}/train.parquet", f"VAL_FILES={data[name]}/val.parquet"]
        print(f"[ablate] {name}: training", flush=True)
        model = train(recipe, folder, [f"MODEL={paths['model']}", *files, *budget, *extra])
        print(f"[ablate] {name}: evaluating {model}", flush=True)
        plain = i < ROWS.index("+ role tokens")
        results["rows"][name] = evaluate(model, items, f"{data[name]}/val.parquet", settings, plain)
        print(f"[ablate] {name}: {json.dumps(results['rows'][name])}", flush=True)
    print("\n".join(write_outputs(work, results, args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
