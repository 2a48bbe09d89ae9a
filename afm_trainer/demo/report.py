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


def write_json(path: str, data) -> None:
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
            write_json(cached, result)
        with open(cached) as f:
            results[name] = json.load(f)
        print(f"[eval] {stage} {name}: accuracy {results[name]['accuracy']:.1%}", flush=True)
    return results


# The simple baselines: the report's label -> results.json's key.
BASELINES = {"majority answer": "majority_baseline", "nearest training example": "nearest_example_baseline"}


def baselines(out_dir: str, suite_names: list[str], min_score: float | None = None) -> dict[str, dict]:
    """The simple baselines by label, then suite (overall and by difficulty), on the items
    the stages were scored on: the majority answer (the most frequent training answer of
    the item's group) and the nearest training example (the answer or program of the
    training example whose prompt is nearest the item's; traces scored below ``min_score``
    are not training examples, as in the demo's data)."""
    from afm_trainer.eval.scoring import majority_baseline, nearest_example_baseline

    world, out = _world(out_dir), {label: {} for label in BASELINES}
    for name in suite_names:
        suite = get_suite(name)
        rows = read_jsonl(os.path.join(out_dir, "eval", "untrained", name, "predictions.jsonl"))
        out["majority answer"][name] = majority_baseline(suite.training_answers(world), rows, suite.group_key)
        items = read_jsonl(os.path.join(world, "heldout", suite.heldout_file))  # what evaluate_stage scores
        examples = suite.training_examples(world, min_score)
        out["nearest training example"][name] = nearest_example_baseline(suite, examples, items)
    return out


def types_without_programs(out_dir: str) -> list[str]:
    """The problem types the world wrote no agent chain for: no training example holds
    their programs (make_world's ``types_without_programs``)."""
    with open(os.path.join(_world(out_dir), "manifest.json")) as f:
        return json.load(f).get("types_without_programs", [])


def program_split(stage_results: dict[str, dict], base: dict, unseen: list[str]) -> dict[str, dict[str, float]]:
    """Code accuracy on the items whose program no training example holds, and on the
    others (recall of a trained program), per stage and for the nearest-example baseline
    (types hold equal numbers of items: the mean of types is that of items)."""

    def split(by_group: dict[str, float]) -> dict[str, float]:
        groups = {"not in training": [g for g in by_group if g in unseen]}
        groups["in training (recall)"] = [g for g in by_group if g not in unseen]
        return {k: sum(by_group[g] for g in gs) / len(gs) for k, gs in groups.items() if gs}

    out = {stage: split(r["code"]["by_group"]) for stage, r in stage_results.items()}
    out["nearest training example"] = split(base["nearest training example"]["code"]["by_group"])
    return out


def program_section(split: dict[str, dict[str, float]], unseen: list[str]) -> list[str]:
    columns = list(split)
    lines = [
        "### code: programs in and not in the training set",
        "",
        f"Every training program of a type is the same reference program, so on the types trained, held-out "
        f"accuracy measures recall of it. No training example holds a program for {', '.join(unseen)}: "
        "those items measure writing a program not seen.",
        "",
        "| programs | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for row in ("not in training", "in training (recall)"):
        lines.append(f"| {row} | " + " | ".join(f"{split[c].get(row, 0.0):.1%}" for c in columns) + " |")
    return lines + [""]


def easy_tier_accuracy(stage_results: dict[str, dict], base: dict, suite_name: str) -> dict[str, float]:
    """Mean accuracy over the suite's easy tiers for every stage and baseline (tiers hold
    equal or nearly equal numbers of items: the mean of tiers is that of items)."""
    tiers = get_suite(suite_name).easy_tiers
    mean = lambda by_d: sum(by_d.get(t, 0.0) for t in tiers) / len(tiers)  # noqa: E731
    out = {stage: mean(r[suite_name]["by_difficulty"]) for stage, r in stage_results.items()}
    out |= {label: mean(by_suite[suite_name]["by_difficulty"]) for label, by_suite in base.items()}
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
    lines += [""] + [f"Baseline ({label}): {by_suite[name]['overall']:.1%}" for label, by_suite in base.items()]
    final_accuracy = stage_results[stages[-1]][name]["accuracy"]
    for label, by_suite in base.items():
        if by_suite[name]["overall"] >= final_accuracy:
            lines += [
                "",
                f"The {label} baseline ({by_suite[name]['overall']:.1%}) matches or beats the final stage "
                f"({final_accuracy:.1%}): on this suite the model shows nothing beyond it.",
            ]
    lines += ["", f"### {name} by difficulty", ""]
    columns = stages + list(base)
    lines += ["| difficulty | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for d in stage_results[stages[0]][name]["by_difficulty"]:
        cells = [f"{stage_results[s][name]['by_difficulty'].get(d, 0):.1%}" for s in stages]
        cells += [f"{by_suite[name]['by_difficulty'].get(d, 0):.1%}" for by_suite in base.values()]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
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
    base = baselines(out_dir, names, settings["data"]["min_score"])
    easy = {name: easy_tier_accuracy(stage_results, base, name) for name in names}
    results = {"stages": stage_results} | {BASELINES[label]: by_suite for label, by_suite in base.items()}
    unseen = types_without_programs(out_dir) if "code" in names else []
    if unseen:
        results["code_programs"] = program_split(stage_results, base, unseen)
    write_json(os.path.join(out_dir, "results.json"), results | {"easy_tiers": easy})
    lines = ["# afm-trainer progressive demo", "", "Held-out accuracy (greedy; verifiers of the demo world).", ""]
    for name in names:
        lines += suite_section(name, stage_results, base)
        if name == "code" and unseen:
            lines += program_section(results["code_programs"], unseen)
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
        for label, style in (("majority answer", "--"), ("nearest training example", ":")):
            by_d = base[label][name]["by_difficulty"]
            ax.plot([int(d) for d in by_d], list(by_d.values()), style, color="grey", label=label)
        ax.set_title(f"{name}: accuracy by difficulty")
        ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "accuracy_by_difficulty.png"), dpi=110)
