"""An RL run's report: OUT_DIR/report.md and reward_curve.png from verl's metrics, and
held-out accuracy with standard errors from its validation dumps (OUT_DIR/validation)."""

from __future__ import annotations

import os
from statistics import median

from afm_trainer.eval.scoring import mean_and_error, paired_change, pass_at_k
from afm_trainer.metrics import read_metrics, read_records
from afm_trainer.recipes.common import write_markdown

VALIDATION_DIR = "validation"  # trainer.validation_data_dir: one STEP.jsonl per validation, a row per item
ROLLOUT_TRACE = "rollout_batches.jsonl"  # the CPU rollout's batches (rollout.custom.trace)


def read_validation_answers(out_dir: str) -> dict[int, dict[str, list[float]]]:
    """{step: {item (its prompt): its answers' correctness, 0 or 1}} from verl's validation
    dumps, several answers an item when validation samples (val_kwargs.n > 1); a line cut
    short by a killed run is skipped."""
    folder = os.path.join(out_dir, VALIDATION_DIR)
    found = {}
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if not name.endswith(".jsonl") or not name[: -len(".jsonl")].isdigit():
            continue
        answers = {}
        for row in read_records(os.path.join(folder, name)):
            answers.setdefault(row["input"], []).append(float(row["correct"]))
        found[int(name[: -len(".jsonl")])] = answers
    return dict(sorted(found.items()))


def read_validations(out_dir: str) -> dict[int, dict[str, float]]:
    """{step: {item: fraction of its answers correct}} (``read_validation_answers``)."""
    return fractions(read_validation_answers(out_dir))


def fractions(answers: dict[int, dict[str, list[float]]]) -> dict[int, dict[str, float]]:
    return {step: {item: sum(c) / len(c) for item, c in items.items()} for step, items in answers.items()}


STAGES = ["gen", "old_log_prob", "ref", "values", "adv", "update_critic", "update_actor", "update_weights"]


def step_time_lines(metrics: dict[int, dict[str, float]], trace_path: str) -> tuple[list[str], dict]:
    """Where a training step's time goes: verl's timers (median over the steps after the
    first, which also warms up), and inside generation, the CPU rollout's batches
    (rollout.custom.trace): time spent decoding, and the rest (tool calls, the agent
    loop, waiting for the last trajectory)."""
    steps = [s for s, m in metrics.items() if "timing_s/step" in m][1:]
    if not steps:
        return [], {}
    timers = {
        stage: median([metrics[s].get(f"timing_s/{stage}", 0.0) for s in steps])
        for stage in ["step", *STAGES]
        if any(f"timing_s/{stage}" in metrics[s] for s in steps)
    }
    lines = ["", f"## Step time (median of steps {steps[0]}-{steps[-1]}, seconds)", ""]
    lines += [
        "| " + " | ".join(timers) + " |",
        "|" + "---|" * len(timers),
        "| " + " | ".join(f"{v:.2f}" for v in timers.values()) + " |",
    ]
    breakdown = {"timers": timers}
    validation_times = {s: m["timing_s/testing"] for s, m in metrics.items() if "timing_s/testing" in m}
    if validation_times:
        lines += [
            "",
            "Validation: " + ", ".join(f"{v:.1f} s after step {s}" for s, v in validation_times.items()) + ".",
        ]
        breakdown["validation"] = validation_times
    if os.path.exists(trace_path):
        batches = {}
        for batch in read_records(trace_path):
            if not batch.get("greedy"):  # a training rollout: its label is the weights' step, one behind
                batches.setdefault(batch["step"] + 1, []).append(batch)
        per_step = [batches[s] for s in steps if s in batches]
        if per_step:
            decode = median([sum(b["seconds"] for b in bs) for bs in per_step])
            rollout = {
                "batches": median([len(bs) for bs in per_step]),
                "requests per batch": median([sum(b["requests"] for b in bs) / len(bs) for bs in per_step]),
                "decoding s": decode,
                "rest of gen s": timers["gen"] - decode,
                "new tokens": median([sum(b["new_tokens"] for b in bs) for bs in per_step]),
                "prompt tokens re-encoded": median([sum(b["prompt_tokens"] for b in bs) for bs in per_step]),
                "padding share of prefill": median(
                    [
                        1 - sum(b["prompt_tokens"] for b in bs) / sum(b["padded_prompt_tokens"] for b in bs)
                        for bs in per_step
                    ]
                ),
            }
            lines += ["", "Generation, from the rollout's batches (median per step):", ""]
            lines += ["| " + " | ".join(rollout) + " |", "|" + "---|" * len(rollout)]
            lines.append(
                "| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in rollout.values()) + " |"
            )
            breakdown["generation"] = rollout
    return lines, breakdown


def accuracy(items: dict[str, float]) -> float:
    return sum(items.values()) / len(items)


def first_to_last(validations: dict[int, dict[str, float]]) -> tuple[int, int, float, float, int] | None:
    """(first step, last step, change, its standard error, items) of the accuracy from the
    first validation to the last, paired by item; None without two validations sharing items."""
    (first, start), (last, end) = next(iter(validations.items())), list(validations.items())[-1]
    shared = start.keys() & end.keys()
    if last == first or not shared:
        return None
    change, error = paired_change({k: start[k] for k in shared}, {k: end[k] for k in shared})
    return first, last, change, error, len(shared)


def validation_lines(validations: dict[int, dict[str, float]], sampled: bool = False) -> list[str]:
    """Held-out accuracy at each validation with its standard error, and the change from
    the first to the last paired by item (``sampled``: the mean over each item's answers)."""
    if not validations:
        return []
    how = "sampled, mean over each item's answers" if sampled else "greedy"
    lines = ["", f"## Held-out accuracy (verl's validation, {how})", "", "| step | items | accuracy | standard error |"]
    lines.append("|---|---|---|---|")
    for step, items in validations.items():
        if sampled:  # the spread of the items' fractions
            p, error = mean_and_error(list(items.values()))
        else:  # one answer an item: binomial
            p = accuracy(items)
            error = (p * (1 - p) / len(items)) ** 0.5
        lines.append(f"| {step} | {len(items)} | {p:.1%} | {error:.1%} |")
    paired = first_to_last(validations)
    if paired:
        first, last, change, error, n = paired
        lines += ["", f"Step {first} -> {last}: {change:+.1%} (standard error {error:.1%}, paired by item, {n} items)"]
    return lines


def pass_at_k_by_item(answers: dict[int, dict[str, list[float]]]) -> dict[int, dict[int, dict[str, float]]]:
    """{step: {k: {item: pass@k}}} for k = 1, 2, 4, ... up to the fewest answers an item has
    at that step (an item's answers are its samples when val_kwargs.n > 1)."""
    out = {}
    for step, items in answers.items():
        n = min(len(c) for c in items.values())
        ks = [k for k in (2**i for i in range(n.bit_length())) if k <= n]
        out[step] = {k: {item: pass_at_k(len(c), int(sum(c)), k) for item, c in items.items()} for k in ks}
    return out


def pass_at_k_lines(
    table: dict[int, dict[int, dict[str, float]]], answers: dict[int, dict[str, list[float]]]
) -> list[str]:
    """Sampled validations: pass@k at each validation (``pass_at_k_by_item``) with its
    standard error over the items, and each k's change from the first validation to the
    last, paired by item."""
    ks = sorted(set.intersection(*(set(by_k) for by_k in table.values())))
    if not ks or ks == [1]:
        return []
    lines = ["", "## pass@k (verl's validation, sampled answers; unbiased estimator, standard error over items)", ""]
    lines += ["| step | items | answers per item | " + " | ".join(f"pass@{k}" for k in ks) + " |"]
    lines.append("|---|---|---|" + "---|" * len(ks))
    for step, by_k in table.items():
        cells = []
        for k in ks:
            mean, error = mean_and_error(list(by_k[k].values()))
            cells.append(f"{mean:.1%} ({error:.1%})")
        n = min(len(c) for c in answers[step].values())
        lines.append(f"| {step} | {len(by_k[ks[0]])} | {n} | " + " | ".join(cells) + " |")
    changes = [first_to_last({step: by_k[k] for step, by_k in table.items()}) for k in ks]
    if changes[0]:  # two validations sharing items
        first, last = changes[0][0], changes[0][1]
        lines += [
            "",
            f"Step {first} -> {last}, paired by item: "
            + ", ".join(f"pass@{k} {c[2]:+.1%} ({c[3]:.1%})" for k, c in zip(ks, changes) if c),
        ]
    return lines


def write_report(out_dir: str) -> dict:
    """OUT_DIR/report.md and reward_curve.png from verl's metrics: mean reward of the first
    and last five steps, and held-out accuracy (verl's validation, greedy) over training."""
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
    ]
    if steps:  # a validation-only run (trainer.val_only=true) trains none
        lines.append(f"| mean reward, first 5 steps | {summary['reward_first5']:.3f} |")
        lines.append(f"| mean reward, last 5 steps | {summary['reward_last5']:.3f} |")
    for source, series in summary["heldout_accuracy"].items():
        points = ", ".join(f"step {s}: {v:.1%}" for s, v in series.items())
        lines.append(f"| held-out accuracy {source} | {points} |")
    answers = read_validation_answers(out_dir)
    validations = fractions(answers)
    summary["validation"] = {step: accuracy(items) for step, items in validations.items()}
    sampled = any(len(c) > 1 for items in answers.values() for c in items.values())
    lines += validation_lines(validations, sampled)
    if sampled:
        table = pass_at_k_by_item(answers)
        summary["pass_at_k"] = {step: {k: accuracy(items) for k, items in by_k.items()} for step, by_k in table.items()}
        lines += pass_at_k_lines(table, answers)
    timing_lines, summary["step_time"] = step_time_lines(metrics, os.path.join(out_dir, ROLLOUT_TRACE))
    lines += timing_lines
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


def moving_average(values: list[float], window: int) -> list[float]:
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
        for i in range(len(values))
    ]


def compare_runs(out_dirs: list[str], out: str, window: int = 5) -> list[str]:
    """Several runs of the recipe side by side (rollout seeds, GRPO against PPO): one
    table (reward, held-out accuracy first and last with the paired change and its
    standard error, median step time) in OUT/comparison.md, and the reward curves,
    smoothed over ``window`` steps and averaged over the runs of each algorithm, in
    OUT/reward_curves.png."""
    rows, curves = [], {}
    for run in out_dirs:
        metrics = read_metrics(run)
        rewards = [m["critic/score/mean"] for m in metrics.values() if "critic/score/mean" in m]
        if not rewards:
            raise ValueError(f"{run}: no training steps in its metrics.jsonl")
        algorithm = "PPO" if any("critic/vf_loss" in m for m in metrics.values()) else "GRPO"
        validations = read_validations(run)
        held_out = [f"{accuracy(v):.1%}" for v in validations.values()] or ["-"]
        paired = first_to_last(validations) if validations else None
        steps = [m["timing_s/step"] for m in metrics.values() if "timing_s/step" in m][1:]
        rows.append(
            f"| {os.path.basename(os.path.normpath(run))} | {algorithm} | {len(rewards)} | {sum(rewards[:5]) / len(rewards[:5]):.3f} "
            f"| {sum(rewards[-5:]) / len(rewards[-5:]):.3f} | {held_out[0]} | {held_out[-1]} "
            f"| {f'{paired[2]:+.1%} ({paired[3]:.1%})' if paired else '-'} | {median(steps) if steps else float('nan'):.1f} |"
        )
        curves.setdefault(algorithm, []).append(moving_average(rewards, window))
    lines = [
        "# RL runs compared",
        "",
        "| run | algorithm | steps | reward, first 5 | reward, last 5 | held-out, first | held-out, last "
        "| change (standard error, paired) | median step s |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    os.makedirs(out, exist_ok=True)
    write_markdown(out, lines, "comparison.md")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for color, (algorithm, runs) in zip(["tab:green", "tab:purple", "tab:blue", "tab:orange"], curves.items()):
        length = min(len(c) for c in runs)
        for c in runs:
            ax.plot(range(1, len(c) + 1), c, color=color, alpha=0.3)
        mean = [sum(c[i] for c in runs) / len(runs) for i in range(length)]
        ax.plot(range(1, length + 1), mean, color=color, linewidth=2, label=f"{algorithm}, mean of {len(runs)} run(s)")
    ax.set_xlabel("step")
    ax.set_ylabel(f"mean reward, moving average of {window}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "reward_curves.png"), dpi=110)
    return lines
