"""An RL run's report: OUT_DIR/report.md and reward_curve.png from verl's metrics."""

from __future__ import annotations

import os

from afm_trainer.recipes.common import write_markdown


def write_report(out_dir: str) -> dict:
    """OUT_DIR/report.md and reward_curve.png from verl's metrics: mean reward of the first
    and last five steps, and held-out accuracy (verl's validation, greedy) over training."""
    from afm_trainer.metrics import read_metrics

    metrics = read_metrics(out_dir)
    rewards = {step: m["critic/score/mean"] for step, m in metrics.items() if "critic/score/mean" in m}
    accuracy_keys = sorted(
        {k for m in metrics.values() for k in m if k.startswith("val-aux/") and "/correct/mean@" in k}
    )
    validation = {key: {step: m[key] for step, m in metrics.items() if key in m} for key in accuracy_keys}
    steps = list(rewards)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    summary = {
        "steps": len(steps),
        "reward_first5": mean([rewards[s] for s in steps[:5]]),
        "reward_last5": mean([rewards[s] for s in steps[-5:]]),
        "heldout_accuracy": {key.split("/")[1] + "/" + key.split("/")[2]: series for key, series in validation.items()},
    }
    lines = [
        "# afm-trainer RL run",
        "",
        "| | value |",
        "|---|---|",
        f"| steps | {len(steps)} |",
        f"| mean reward, first 5 steps | {summary['reward_first5']:.3f} |",
        f"| mean reward, last 5 steps | {summary['reward_last5']:.3f} |",
    ]
    for source, series in summary["heldout_accuracy"].items():
        points = ", ".join(f"step {s}: {v:.1%}" for s, v in series.items())
        lines.append(f"| held-out accuracy {source} | {points} |")
    write_markdown(out_dir, lines)
    if steps:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, [rewards[s] for s in steps], "o-", label="mean reward (training rollouts)")
        for source, series in summary["heldout_accuracy"].items():
            ax.plot(list(series), list(series.values()), "s--", label=f"held-out accuracy {source}")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "reward_curve.png"), dpi=110)
    return summary
