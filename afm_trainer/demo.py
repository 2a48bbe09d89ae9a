"""The embedded default of the progressive recipe (what `make demo` runs).

With no model and no data given, ``recipes/train_progressive.sh NPROC OUT_DIR`` builds
everything here under ``OUT_DIR/embedded/``: the tiny model, the demo world's
trajectories (``afm_trainer.tasks.make_demo``), the search-agent data pipeline with
extractive summaries, and the algorithmic teacher traces for phase 1. It evaluates the
untrained model and the model after each phase on the held-out suites and writes
``OUT_DIR/report.md``, ``OUT_DIR/results.json`` and PNG plots. Every step is skipped
when its output is already complete, so a re-run resumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny-model settings: learning rates far above the 1e-5 meant for pretrained models.
EMBEDDED_DEFAULTS = {"PHASE1_LR": "2e-3", "PHASE2_LR": "1e-3", "PHASE3_LR": "5e-4",
                     "PHASE1_EPOCHS": "4", "PHASE2_EPOCHS": "2", "PHASE3_EPOCHS": "1"}  # fmt: skip
# Generous: a phase-3 model writes a <summary> before each step.
EVAL_MAX_NEW_TOKENS = 256
STAGES = ["untrained", "phase1_multiturn", "phase2_summary_only", "phase3_summary_prefix"]


def embedded_paths(out_dir: str) -> dict:
    root = os.path.join(os.path.abspath(out_dir), "embedded")
    return {
        "root": root,
        "model": os.path.join(root, "model"),
        "world": os.path.join(root, "world"),
        "data": os.path.join(root, "data"),
        "algorithmic": os.path.join(root, "algorithmic"),
    }


def prepare(out_dir: str, n_train: int = 600) -> dict:
    """Build model, world and training sets (each skipped when already complete)."""
    from afm_trainer.data.convert import convert
    from afm_trainer.models.tiny import build_tiny_model
    from afm_trainer.tasks.make_demo import make_demo

    paths = embedded_paths(out_dir)
    if not os.path.isfile(os.path.join(paths["model"], "config.json")):
        print("[prepare] building the tiny model", flush=True)
        build_tiny_model(paths["model"], size="tiny")
    if not os.path.isfile(os.path.join(paths["world"], "manifest.json")):
        print("[prepare] writing the demo world", flush=True)
        make_demo(paths["world"], n_train=n_train)
    if not os.path.isfile(os.path.join(paths["data"], "summary_prefix", "val.parquet")):
        print("[prepare] running the search-agent data pipeline", flush=True)
        subprocess.run(["bash", os.path.join(REPO, "data_preprocess", "run_pipeline.sh"),
                        os.path.join(paths["world"], "traces", "search_agent.jsonl"), paths["data"]],
                       check=True, env={**os.environ, "PYTHON": sys.executable, "MIN_SCORE": "0.5"})  # fmt: skip
    algo_train = os.path.join(paths["algorithmic"], "train.parquet")
    if not os.path.isfile(algo_train):
        print("[prepare] converting the algorithmic teacher traces", flush=True)
        os.makedirs(paths["algorithmic"], exist_ok=True)
        # Drafts dropped: evaluation asks the bare question, so training must too (seed 004).
        source = os.path.join(paths["world"], "traces", "teacher_cot.jsonl")
        no_drafts = os.path.join(paths["algorithmic"], "teacher_cot_no_drafts.jsonl")
        with open(source) as f, open(no_drafts, "w") as g:
            for line in f:
                record = json.loads(line)
                record.pop("student_draft", None)
                g.write(json.dumps(record) + "\n")
        # Held-out tasks come from another seed already, so every converted row is training data.
        convert(no_drafts, algo_train, "teacher_cot", "multiturn", min_score=0.5)
    return paths


def embedded_keys(paths: dict) -> dict:
    """Phase data: the three search-agent sets, each with the algorithmic traces beside
    it, since phases 2 and 3 alone would make the model forget that suite (measured:
    7.3% after phase 1, 0.0% after phase 2 without them)."""
    algorithmic = os.path.join(paths["algorithmic"], "train.parquet")
    keys = {"MODEL": paths["model"], "DATA_DIR": paths["data"], **EMBEDDED_DEFAULTS}
    for number, name in ((1, "multiturn"), (2, "summary_only"), (3, "summary_prefix")):
        keys[f"PHASE{number}_TRAIN_FILES"] = os.path.join(paths["data"], name, "train.parquet") + "," + algorithmic
        keys[f"PHASE{number}_VAL_FILES"] = os.path.join(paths["data"], name, "val.parquet")
    return keys


def evaluate_stage(out_dir: str, stage: str, model_dir: str) -> dict:
    """Held-out results of one stage (cached in OUT_DIR/eval/STAGE/)."""
    from afm_trainer.eval.scoring import evaluate_suite

    paths = embedded_paths(out_dir)
    results = {}
    for suite, data in (("algorithmic", "algorithmic.jsonl"), ("qa", "qa.jsonl")):
        folder = os.path.join(out_dir, "eval", stage, suite)
        cached = os.path.join(folder, "results.json")
        if not os.path.exists(cached):
            result = evaluate_suite(model_dir, suite, os.path.join(paths["world"], "heldout", data),
                                    os.path.join(paths["world"], "world", "corpus.jsonl"), max_new_tokens=EVAL_MAX_NEW_TOKENS)  # fmt: skip
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "predictions.jsonl"), "w") as f:
                for row in result.pop("predictions"):
                    f.write(json.dumps(row) + "\n")
            with open(cached + ".tmp", "w") as f:
                json.dump(result, f, indent=2)
            os.replace(cached + ".tmp", cached)
        with open(cached) as f:
            results[suite] = json.load(f)
        print(f"[eval] {stage} {suite}: accuracy {results[suite]['accuracy']:.1%}", flush=True)
    return results


def baselines(out_dir: str) -> dict:
    """Majority-answer baselines: the most frequent training answer per type / per hops."""
    from afm_trainer.eval.scoring import majority_baseline

    paths = embedded_paths(out_dir)
    read = lambda p: [json.loads(l) for l in open(p) if l.strip()]  # noqa: E731
    algo_train, qa_train = defaultdict(list), defaultdict(list)
    for r in read(os.path.join(paths["world"], "traces", "teacher_cot.jsonl")):
        if "answer" in r and "type" in r:
            algo_train[r["type"]].append(r["answer"])
    for r in read(os.path.join(paths["world"], "traces", "search_agent.jsonl")):
        if "answer" in r:
            qa_train[str(r.get("hops"))].append(r["answer"])
    out = {}
    for suite, train, key in (("algorithmic", algo_train, "type"), ("qa", qa_train, "hops")):
        rows = read(os.path.join(out_dir, "eval", "untrained", suite, "predictions.jsonl"))
        out[suite] = majority_baseline(train, rows, key)
    return out


def write_report(out_dir: str, stage_results: dict[str, dict]) -> None:
    from afm_trainer.metrics import read_metrics

    base = baselines(out_dir)
    results = {"stages": stage_results, "majority_baseline": base}
    with open(os.path.join(out_dir, "results.json.tmp"), "w") as f:
        json.dump(results, f, indent=2)
    os.replace(os.path.join(out_dir, "results.json.tmp"), os.path.join(out_dir, "results.json"))

    lines = ["# afm-trainer progressive demo", "", "Held-out accuracy (greedy; verifiers of the demo world).", ""]
    for suite, group_name in (("algorithmic", "type"), ("qa", "hops")):
        stages = [s for s in STAGES if s in stage_results]
        groups = list(stage_results[stages[0]][suite]["by_group"])
        lines += [f"## {suite} by {group_name}", "", "| " + group_name + " | " + " | ".join(stages) + " |",
                  "|---" * (len(stages) + 1) + "|"]  # fmt: skip
        for g in groups + ["overall", "format valid"]:
            cells = []
            for s in stages:
                r = stage_results[s][suite]
                value = r["accuracy"] if g == "overall" else r["format_valid"] if g == "format valid" else r["by_group"].get(g, 0)
                cells.append(f"{value:.1%}")
            lines.append(f"| {g} | " + " | ".join(cells) + " |")
        lines += ["", f"Majority-answer baseline: {base[suite]:.1%}", "", f"### {suite} by difficulty", "",
                  "| difficulty | " + " | ".join(stages) + " |", "|---" * (len(stages) + 1) + "|"]  # fmt: skip
        for d in stage_results[stages[0]][suite]["by_difficulty"]:
            lines.append(f"| {d} | " + " | ".join(f"{stage_results[s][suite]['by_difficulty'].get(d, 0):.1%}" for s in stages) + " |")
        final = stage_results[stages[-1]][suite]["label_distribution"]
        lines += ["", f"Final model's answers vs gold (top labels): gold {final['gold']}, predicted {final['predicted']}", ""]
    with open(os.path.join(out_dir, "report.md.tmp"), "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(os.path.join(out_dir, "report.md.tmp"), os.path.join(out_dir, "report.md"))
    print("\n".join(lines), flush=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    offset = 0
    for stage in STAGES[1:]:
        metrics = read_metrics(os.path.join(out_dir, stage))
        steps = [s for s, m in metrics.items() if "train/loss" in m]
        if steps:
            ax.plot([offset + s for s in steps], [metrics[s]["train/loss"] for s in steps], label=stage)
            offset += max(steps)
    ax.set_xlabel("step (phases end to end)")
    ax.set_ylabel("train loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "loss_curves.png"), dpi=110)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, suite in zip(axes, ("algorithmic", "qa")):
        for stage in [s for s in STAGES if s in stage_results]:
            by_d = stage_results[stage][suite]["by_difficulty"]
            ax.plot([int(d) for d in by_d], list(by_d.values()), "o-", label=stage)
        ax.axhline(base[suite], color="grey", linestyle="--", label="majority answer")
        ax.set_title(f"{suite}: accuracy by {'difficulty' if suite == 'algorithmic' else 'hops'}")
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "accuracy_by_difficulty.png"), dpi=110)
