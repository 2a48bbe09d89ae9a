"""The DPO recipe's embedded default (``make demo-dpo``): preference training of the
progressive demo's final model on its own answers, with the settings of config/dpo.yaml.

prepare (RL prompts of the demo world's easy code tasks, then on-policy pairs sampled
from the start model and scored in the sandbox, in ``OUT_DIR/data``) -> the DPO recipe
-> the baseline: SFT on the same pairs' chosen answers (``OUT_DIR/baseline_sft``) ->
evaluation of the start, DPO and baseline models on the held-out easy tasks (greedy, and
sampled answers at the pairs' temperature, compared item by item) -> ``OUT_DIR/report.md``.
"""

from __future__ import annotations

import json
import os

from afm_trainer.checkpoints import latest_complete
from afm_trainer.demo import load_settings, progressive_demo_model
from afm_trainer.demo.progressive import embedded_paths
from afm_trainer.eval.scoring import paired_change
from afm_trainer.recipes.common import RecipeArgs, RecipeError

BASELINE = "SFT on the chosen answers"


def embedded_default(args: RecipeArgs) -> tuple[RecipeArgs, dict]:
    """The recipe arguments of the demo (its data made unless a dry run), and its settings."""
    from afm_trainer.data.onpolicy_pairs import make_onpolicy_pairs
    from afm_trainer.data.rl_data import make_rl_data
    from afm_trainer.suites import RLDataRequest

    settings = load_settings("dpo", args.get("DEMO_CONFIG"))
    sft_dir = args.get("SFT_DIR", "out/demo")
    world = embedded_paths(sft_dir)["world"]
    model = progressive_demo_model(sft_dir, args.dry_run)
    folder = os.path.join(os.path.abspath(args.out_dir), "data")
    pairs = os.path.join(folder, "pairs.parquet")
    if not args.dry_run and not os.path.exists(pairs):
        data, sampling = settings["data"], settings["pairs"]
        request = RLDataRequest(folder, world, tuple(data["difficulties"]), data["n_train"], data["n_val"])
        make_rl_data(data["suites"], request)
        report = make_onpolicy_pairs(
            model,
            os.path.join(folder, "train.parquet"),
            pairs,
            samples=sampling["samples"],
            temperature=sampling["temperature"],
            pairs_per_prompt=sampling["pairs_per_prompt"],
        )
        print(f"[prepare] on-policy pairs: {json.dumps(report)}", flush=True)
    keys = {"MODEL": model, "TRAIN_FILES": pairs}
    embedded = RecipeArgs(args.nproc, args.out_dir, {**keys, **args.keys}, [*settings["overrides"], *args.overrides])
    return embedded, {**settings, "world": world, "start_model": model}


def train_baseline(args: RecipeArgs, config) -> str:
    """The simplest thing that could raise the sampled accuracy: SFT on the chosen answers
    of the same pairs (rejection-sampling fine-tuning), from the same start model with the
    DPO run's learning rate, warm-up, epochs and examples per step (``config``, the DPO
    run's composed config), in OUT_DIR/baseline_sft. Returns its final export."""
    from afm_trainer.data.pair_dataset import chosen_as_sft
    from afm_trainer.recipes.common import run
    from afm_trainer.recipes.sft.main import build_sft

    data = os.path.join(os.path.abspath(args.out_dir), "data", "chosen_sft.parquet")
    if not os.path.exists(data):
        chosen_as_sft([args.get("TRAIN_FILES")], data)
    out = os.path.join(os.path.abspath(args.out_dir), "baseline_sft")
    same = [
        f"optim.lr={config.optim.lr}",
        f"optim.lr_warmup_steps_ratio={config.optim.lr_warmup_steps_ratio}",
        f"trainer.total_epochs={config.trainer.total_epochs}",
        f"data.train_batch_size={config.data.train_batch_size}",
    ]
    keys = {"MODEL": args.get("MODEL"), "TRAIN_FILES": data}
    code = run(build_sft(RecipeArgs(args.nproc, out, keys, same)), "baseline sft", False)
    if code != 0:
        raise RecipeError(f"the baseline SFT run exited with code {code} (its log is above)")
    return os.path.join(latest_complete(out), "huggingface")


def evaluation_report(args: RecipeArgs, demo: dict, config) -> list[str]:
    """After the DPO run: train the baseline, evaluate start, DPO and baseline models,
    and return the report's evaluation section."""
    trained = os.path.join(latest_complete(args.out_dir), "huggingface")
    models = {"start (SFT)": demo["start_model"], "after DPO": trained, BASELINE: train_baseline(args, config)}
    return evaluation_lines(evaluate_models(models, demo["world"], demo), demo)


def evaluate_models(models: dict[str, str], world: str, settings: dict) -> dict:
    """Greedy and sampled held-out accuracy on the easy code tasks, per model."""
    from afm_trainer.eval.scoring import summarise
    from afm_trainer.suites import EvalRun, get_suite
    from afm_trainer.suites.base import read_jsonl

    suite = get_suite("code")
    items = [
        it
        for it in read_jsonl(os.path.join(world, "heldout", suite.heldout_file))
        if str(it.get("difficulty")) in suite.easy_tiers
    ]
    evaluation = settings["evaluation"]
    results = {}
    for name, path in models.items():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        greedy = suite.evaluate(EvalRun(model, tokenizer, suite.max_new_tokens), items)
        sampled = []
        for seed in range(evaluation["sampled_answers"]):
            run = EvalRun(model, tokenizer, suite.max_new_tokens, temperature=evaluation["temperature"], seed=seed)
            sampled += suite.evaluate(run, items)
        by_item = {}
        for row in sampled:
            by_item.setdefault(row["id"], []).append(row["correct"])
        results[name] = {
            "items": len(items),
            "greedy": summarise(greedy, suite.group_key)["accuracy"],
            "sampled": summarise(sampled, suite.group_key)["accuracy"],
            "sampled_by_item": {i: sum(c) / len(c) for i, c in by_item.items()},
        }
        print(f"[eval] {name}: greedy {results[name]['greedy']:.3f} sampled {results[name]['sampled']:.3f}", flush=True)
    return results


def evaluation_lines(results: dict, settings: dict) -> list[str]:
    """The evaluation as report lines: each model's greedy and sampled held-out accuracy."""
    evaluation = settings["evaluation"]
    lines = [
        "",
        f"## Held-out easy code tasks ({next(iter(results.values()))['items']} items)",
        "",
        f"| model | greedy | sampled (T={evaluation['temperature']}, {evaluation['sampled_answers']} answers/item) |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {r['greedy']:.1%} | {r['sampled']:.1%} |" for name, r in results.items()]
    start, *others = results.values()
    lines += [""]
    for name, r in zip(list(results)[1:], others):
        change, error = paired_change(start["sampled_by_item"], r["sampled_by_item"])
        lines += [f"- sampled accuracy, {name} minus start: {change:+.1%} (standard error {error:.1%}, paired by item)"]
    if BASELINE in results and "after DPO" in results:
        change, error = paired_change(results[BASELINE]["sampled_by_item"], results["after DPO"]["sampled_by_item"])
        verdict = (
            "DPO is better"
            if change > 2 * error
            else "the baseline is better"
            if change < -2 * error
            else "within two standard errors"
        )
        lines += [f"- DPO minus {BASELINE}: {change:+.1%} (standard error {error:.1%}): {verdict}"]
    lines += [
        "",
        f"{BASELINE}: the same pairs' preferred answers, trained with SFT from the same start model with",
        "the same learning rate, epochs and examples per step (the simplest way to use the same data).",
        "Every training program of the demo world is one of 11 reference programs, so a lookup of the training",
        "program for the spec would pass nearly every held-out item (greedy accuracy measures recall of them).",
    ]
    return lines
