"""A preference run's report: OUT_DIR/report.md and reward_curves.png from its metrics."""

from __future__ import annotations

import os

from afm_trainer.recipes.common import write_markdown

CURVES = ("dpo/rewards/accuracy", "dpo/rewards/margin", "train/loss")


def write_report(out_dir: str, extra_lines: list[str] | None = None) -> dict:
    """Reward accuracy, margin and loss of the first and last steps (table), their curves
    (PNG, validation points included) and any ``extra_lines`` (e.g. an evaluation)."""
    from afm_trainer.metrics import read_metrics

    metrics = read_metrics(out_dir)
    steps = sorted(s for s, m in metrics.items() if "dpo/rewards/accuracy" in m)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    summary = {"steps": len(steps)}
    lines = ["# afm-trainer preference run", "", "| | first 5 steps | last 5 steps |", "|---|---|---|"]
    for key in CURVES:
        first, last = (mean([metrics[s][key] for s in part]) for part in (steps[:5], steps[-5:]))
        summary[key] = {"first5": first, "last5": last}
        lines.append(f"| {key} | {first:.3f} | {last:.3f} |")
    validation = {s: m for s, m in metrics.items() if "val/rewards/accuracy" in m}
    for step, m in sorted(validation.items()):
        lines.append(
            f"| validation, step {step}: reward accuracy / margin | {m['val/rewards/accuracy']:.3f} | "
            f"{m['val/rewards/margin']:.3f} |"
        )
    lines += extra_lines or []
    write_markdown(out_dir, lines)
    if steps:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, key in zip(axes, CURVES[:2]):
            ax.plot(steps, [metrics[s][key] for s in steps], "o-", markersize=3, label="training batches")
            val_key = key.replace("dpo/", "val/")
            if validation:
                ax.plot(list(validation), [m[val_key] for m in validation.values()], "s--", label="validation pairs")
            ax.set_title(key.removeprefix("dpo/"))
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "reward_curves.png"), dpi=110)
        plt.close(fig)
    return summary
