"""The progressive demo's evaluation and report: held-out accuracy of every stage on each
suite, against the majority answer, by group and by difficulty, with PNG plots."""

from __future__ import annotations

import json
import os

from afm_trainer.recipes.common import write_markdown
from afm_trainer.suites import get_suite
from afm_trainer.suites.base import read_jsonl

STAGES = ["untrained", "phase1_multiturn", "phase2_summary_only", "phase3_summary_prefix"]


def _world(out_dir: str) -> str:
    return os.path.join(os.path.abspath(out_dir), "embedded", "world")


def _write_json(path: str, data) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=2)
    os.replace(path + ".tmp", path)


def evaluate_stage(out_dir: str, stage: str, model_dir: str, settings: dict) -> dict:
    """Held-out results of one stage on every suite (cached in OUT_DIR/eval/STAGE/SUITE/)."""
    from afm_trainer.eval.scoring import evaluate_suite

    world, results = _world(out_dir), {}
    for name in settings["eval"]["suites"]:
        suite = get_suite(name)
        folder = os.path.join(out_dir, "eval", stage, name)
        cached = os.path.join(folder, "results.json")
        if not os.path.exists(cached):
            budget = settings["eval"]["max_new_tokens"].get(name)  # None: the suite's own
            heldout = os.path.join(world, "heldout", suite.heldout_file)
            result = evaluate_suite(
                model_dir, name, heldout, os.path.join(world, "corpus.jsonl"), max_new_tokens=budget
            )
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "predictions.jsonl"), "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in result.pop("predictions"))
            _write_json(cached, result)
        with open(cached) as f:
            results[name] = json.load(f)
        print(f"[eval] {stage} {name}: accuracy {results[name]['accuracy']:.1%}", flush=True)
    return results


def baselines(out_dir: str, suite_names: list[str]) -> dict:
    """Majority-answer baselines (overall and by difficulty): the most frequent training
    answer of the item's group, scored on the items the stages were scored on."""
    from afm_trainer.eval.scoring import majority_baseline

    out = {}
    for name in suite_names:
        suite = get_suite(name)
        rows = read_jsonl(os.path.join(out_dir, "eval", "untrained", name, "predictions.jsonl"))
        out[name] = majority_baseline(suite.training_answers(_world(out_dir)), rows, suite.group_key)
    return out


def easy_tier_accuracy(stage_results: dict[str, dict], base: dict, suite_name: str) -> dict[str, float]:
    """Mean accuracy over the suite's easy tiers for every stage and the majority baseline
    (tiers hold equal or nearly equal numbers of items: the mean of tiers is that of items)."""
    tiers = get_suite(suite_name).easy_tiers
    mean = lambda by_d: sum(by_d.get(t, 0.0) for t in tiers) / len(tiers)  # noqa: E731
    out = {stage: mean(r[suite_name]["by_difficulty"]) for stage, r in stage_results.items()}
    out["majority answer"] = mean(base[suite_name]["by_difficulty"])
    return out


def suite_section(name: str, stage_results: dict[str, dict], base: dict) -> list[str]:
    suite = get_suite(name)
    stages = [s for s in STAGES if s in stage_results]
    group = suite.group_key
    lines = [f"## {name} by {group}", "", suite.description, ""]
    lines += ["| " + group + " | " + " | ".join(stages) + " |", "|---" * (len(stages) + 1) + "|"]
    rows = list(stage_results[stages[0]][name]["by_group"]) + ["overall", "format valid"]
    if any(stage_results[stage][name].get("summary_rate") for stage in stages):
        rows.append("writes a summary")
    for row in rows:
        cells = []
        for stage in stages:
            r = stage_results[stage][name]
            special = {
                "overall": r["accuracy"],
                "format valid": r["format_valid"],
                "writes a summary": r.get("summary_rate", 0.0),
            }
            cells.append(f"{special.get(row, r['by_group'].get(row, 0)):.1%}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", f"Majority-answer baseline: {base[name]['overall']:.1%}", "", f"### {name} by difficulty", ""]
    lines += ["| difficulty | " + " | ".join(stages) + " | majority answer |", "|---" * (len(stages) + 2) + "|"]
    for d in stage_results[stages[0]][name]["by_difficulty"]:
        cells = [f"{stage_results[s][name]['by_difficulty'].get(d, 0):.1%}" for s in stages]
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {base[name]['by_difficulty'].get(d, 0):.1%} |")
    easy = easy_tier_accuracy(stage_results, base, name)
    lines += [
        "",
        f"Easy tiers (difficulty {', '.join(suite.easy_tiers)}): " + ", ".join(f"{k} {v:.1%}" for k, v in easy.items()),
    ]
    final = stage_results[stages[-1]][name]["label_distribution"]
    lines += [
        "",
        f"Final model's answers vs gold (top labels): gold {final['gold']}, predicted {final['predicted']}",
        "",
    ]
    return lines


def write_report(out_dir: str, stage_results: dict[str, dict], settings: dict) -> None:
    """OUT_DIR/results.json, report.md (printed too), loss_curves.png, accuracy_by_difficulty.png."""
    names = settings["eval"]["suites"]
    base = baselines(out_dir, names)
    easy = {name: easy_tier_accuracy(stage_results, base, name) for name in names}
    _write_json(
        os.path.join(out_dir, "results.json"), {"stages": stage_results, "majority_baseline": base, "easy_tiers": easy}
    )
    lines = ["# afm-trainer progressive demo", "", "Held-out accuracy (greedy; verifiers of the demo world).", ""]
    for name in names:
        lines += suite_section(name, stage_results, base)
    write_markdown(out_dir, lines)
    plot_losses(out_dir)
    plot_accuracy(out_dir, stage_results, base, names)


def plot_losses(out_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from afm_trainer.metrics import read_metrics

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


def plot_accuracy(out_dir: str, stage_results: dict, base: dict, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(14, 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for stage in [s for s in STAGES if s in stage_results]:
            by_d = stage_results[stage][name]["by_difficulty"]
            ax.plot([int(d) for d in by_d], list(by_d.values()), "o-", label=stage)
        by_d = base[name]["by_difficulty"]
        ax.plot([int(d) for d in by_d], list(by_d.values()), "--", color="grey", label="majority answer")
        ax.set_title(f"{name}: accuracy by difficulty")
        ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "accuracy_by_difficulty.png"), dpi=110)
