"""The self-improvement chain's embedded default (``make demo-self-improve``): seed 004 on
the demo world, measured.

``bash recipes/self_improve.sh NPROC OUT_DIR`` with no MODEL and no data builds, under
``OUT_DIR/embedded/``: yes/no questions over the QA world's facts with a scripted
teacher's reasoning (wrong more often on "yes" questions, as seed 004's was) and a
scripted student's drafts (afm_trainer.world.strategy_qa), held-out questions with
drafts, a tiny model whose tokenizer learns the questions' names, and the data pipeline's
tracks A and B and preference pairs, balanced (``data/``) and not (``data_unbalanced/``).
It then runs the chain (phase A -> B -> C) plus phase B on the unbalanced data, evaluates
every phase's final model on the held-out questions (afm_trainer.eval.self_improve: with
the draft, without it, with another question's draft), the share of integrated-gradients
attribution on the draft tokens, and writes ``OUT_DIR/report.md``, ``results.json`` and
PNGs. Every step is skipped when its output is already complete, so a re-run resumes.
"""

from __future__ import annotations

import json
import os

from afm_trainer.demo import load_settings, progressive_demo_model
from afm_trainer.demo.report import write_json
from afm_trainer.recipes.chain.main import Chain, StageFailed, parse_stage, train_stages
from afm_trainer.recipes.common import RecipeArgs, write_markdown
from afm_trainer.suites.base import read_jsonl

# The prompt each phase is evaluated with: how it was trained. The others are ablations.
TRAINED_CONDITION = {"phaseA_direct": "question"}
DEFAULT_CONDITION = "draft"


def embedded_paths(out_dir: str) -> dict:
    root = os.path.join(os.path.abspath(out_dir), "embedded")
    names = ("model", "traces", "data", "data_unbalanced")
    return {"root": root, **{name: os.path.join(root, name) for name in names}}


def start_model(paths: dict, settings: dict, dry_run: bool = False) -> str:
    """The model phase A starts from: the progressive demo's final model when the settings
    name that demo's OUT_DIR (``model.start_from``), else a new tiny model in ``paths``."""
    if settings["model"].get("start_from"):
        return progressive_demo_model(settings["model"]["start_from"], dry_run)
    return paths["model"]


def prepare(out_dir: str, settings: dict) -> dict:
    """Build the questions, the model and the training sets (each skipped when complete)."""
    from afm_trainer.data.self_improve import write_self_improve_data
    from afm_trainer.models.tiny import build_tiny_model
    from afm_trainer.world.qa_world import build_world
    from afm_trainer.world.strategy_qa import make_strategy_questions, write_strategy_traces

    paths = embedded_paths(out_dir)
    paths["model"] = start_model(paths, settings)  # refused before anything is written
    world, drafts = settings["world"], settings["drafts"]
    train_file = os.path.join(paths["traces"], "train.jsonl")
    heldout_file = os.path.join(paths["traces"], "heldout.jsonl")
    if not os.path.isfile(train_file):
        print("[prepare] writing seed 004's questions on the demo world", flush=True)
        os.makedirs(paths["traces"], exist_ok=True)
        facts = build_world(world["seed"])
        heldout = make_strategy_questions(facts, world["seed"] + 1, world["n_heldout"], 0.5)
        write_strategy_traces(
            heldout_file, heldout, world["seed"] + 1, drafts["error_rate"], drafts["clarifier_useful"]
        )
        train = make_strategy_questions(
            facts, world["seed"], world["n_train"], world["yes_ratio"], exclude={q.ask for q in heldout}
        )
        write_strategy_traces(
            train_file,
            train,
            world["seed"],
            drafts["error_rate"],
            drafts["clarifier_useful"],
            settings["teacher"]["error"],
        )
    if not os.path.isfile(os.path.join(paths["model"], "config.json")):
        print("[prepare] building the tiny model (its tokenizer also learns the questions' words)", flush=True)
        domain = os.path.join(paths["root"], "tokenizer_domain.txt")
        with open(domain, "w") as f:
            for record in read_jsonl(train_file):
                f.write("\n".join([record["question"], record["student_draft"], record["teacher_output"]]) + "\n")
        build_tiny_model(paths["model"], size=settings["model"]["size"], domain_file=domain)
    data = settings["data"]
    for folder, balance in ((paths["data"], data["balance"]), (paths["data_unbalanced"], "none")):
        if not os.path.isfile(os.path.join(folder, "pairs", "val.parquet")):
            print(f"[prepare] the data pipeline (balance={balance}) -> {folder}", flush=True)
            report = write_self_improve_data(train_file, folder, min_score=data["min_score"], balance=balance)
            write_json(os.path.join(folder, "report.json"), report)
    return paths


def demo_chain(chain: Chain, settings: dict) -> Chain:
    """The chain, plus phase B on the unbalanced data (from phase A)."""
    extra = parse_stage(settings["unbalanced_stage"], "unbalanced_stage", [s.key for s in chain.stages])
    return Chain(chain.name, [*chain.stages, extra], chain.embedded_default, chain.keys)


def run_embedded_default(args: RecipeArgs, chain: Chain) -> int:
    settings = load_settings("self_improve", args.get("DEMO_CONFIG"))
    if args.dry_run:
        paths = embedded_paths(args.out_dir)
        paths["model"] = start_model(paths, settings, dry_run=True)
    else:
        paths = prepare(args.out_dir, settings)
    extra = settings["unbalanced_stage"]
    unbalanced = os.path.join(paths["data_unbalanced"], extra["data"])
    keys = {
        "MODEL": paths["model"],
        "DATA_DIR": paths["data"],
        f"{extra['key']}_TRAIN_FILES": os.path.join(unbalanced, "train.parquet"),
        f"{extra['key']}_VAL_FILES": os.path.join(unbalanced, "val.parquet"),
        **{k: str(v) for k, v in settings["recipe"].items()},
    }
    args = RecipeArgs(args.nproc, args.out_dir, {**keys, **args.keys}, [*settings["overrides"], *args.overrides])
    models = {}
    try:
        for stage, model in train_stages(demo_chain(chain, settings), args, model_exists=not args.dry_run):
            models[stage.folder] = model
    except StageFailed as exc:
        return exc.returncode
    if args.dry_run:
        return 0
    results = evaluate_all(args.out_dir, paths, models, settings)
    write_report(args.out_dir, results, settings)
    return 0


def evaluate_model(out_dir: str, stage: str, model_dir: str, items: list[dict], settings: dict) -> dict:
    """Every condition's results for one phase's model (cached in OUT_DIR/eval/STAGE.json)."""
    from afm_trainer.eval.self_improve import CONDITIONS, evaluate

    cached = os.path.join(out_dir, "eval", f"{stage}.json")
    if os.path.exists(cached):
        with open(cached) as f:
            return json.load(f)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    budget = settings["evaluation"]["max_new_tokens"]
    result = {c: evaluate(model, tokenizer, items, c, budget) for c in CONDITIONS}
    responses = result["draft"]["responses"]
    for by_condition in result.values():  # the cache keeps a few examples, not every response
        del by_condition["responses"]
    if stage not in TRAINED_CONDITION:
        result["draft attribution"] = draft_attribution(model, tokenizer, items, responses, settings["evaluation"])
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    write_json(cached, result)
    return result


def draft_attribution(model, tokenizer, items: list[dict], responses: list[str], evaluation: dict) -> dict:
    """Mean share of integrated-gradients attribution on the draft's tokens, explaining
    the model's own greedy ``responses`` to the question-and-draft prompts."""
    from afm_trainer.eval.attribution import span_attribution_share
    from afm_trainer.eval.self_improve import condition_prompts

    chosen = items[: evaluation["attribution_items"]]
    prompts = condition_prompts(chosen, "draft")
    shares, deltas = [], []
    for item, prompt, response in zip(chosen, prompts, responses):
        content = prompt[-1]["content"]
        start = content.rindex(item["student_draft"])
        share, delta = span_attribution_share(
            model,
            tokenizer,
            prompt,
            response,
            (start, start + len(item["student_draft"])),
            evaluation["attribution_steps"],
        )
        shares.append(share)
        deltas.append(delta)
    draft_chars = sum(len(it["student_draft"]) for it in chosen)
    prompt_chars = sum(len(p[-1]["content"]) for p in prompts)
    return {
        "items": len(chosen),
        "mean_share": sum(shares) / len(shares),
        "draft_share_of_characters": draft_chars / prompt_chars,
        "max_convergence_delta": max(deltas),
    }


PHASES = {  # the report's order and names
    "phaseA_direct": "phase A (direct answer)",
    "phaseB_cot_unbalanced": "phase B, unbalanced data",
    "phaseB_cot": "phase B (CoT distillation)",
    "phaseC_dpo": "phase C (preference training)",
}


def evaluate_all(out_dir: str, paths: dict, models: dict[str, str], settings: dict) -> dict:
    """Every phase under every condition, the baselines and the data's label balance."""
    from afm_trainer.eval.scoring import nearest_examples
    from afm_trainer.eval.self_improve import draft_answer_baseline, majority_baseline, score

    train = read_jsonl(os.path.join(paths["traces"], "train.jsonl"))
    records = read_jsonl(os.path.join(paths["traces"], "heldout.jsonl"))
    items = [{k: r[k] for k in ("id", "question", "answer", "student_draft", "clarifier_score")} for r in records]
    phases = {}
    for stage in PHASES:
        phases[stage] = evaluate_model(out_dir, stage, models[stage], items, settings)
        trained = TRAINED_CONDITION.get(stage, DEFAULT_CONDITION)
        print(f"[eval] {stage}: {trained} {phases[stage][trained]['accuracy']:.1%}", flush=True)
    nearest = nearest_examples([r["question"] for r in train], [it["question"] for it in items])
    reports = {}
    for name in ("data", "data_unbalanced"):
        with open(os.path.join(paths[name], "report.json")) as f:
            reports[name] = json.load(f)["convert track_b"]["label_balance"]
    return {
        "items": len(items),
        "phases": phases,
        "baselines": {
            "majority answer": majority_baseline([r["answer"] for r in train], items),
            "the draft's answer": draft_answer_baseline(items),
            "nearest training example": score(
                items, [f"<answer>{train[i]['answer'] if i is not None else ''}</answer>" for i in nearest]
            ),
        },
        "track_b_labels": {
            "before filtering": reports["data"]["before_filtering"],
            "after filtering": reports["data_unbalanced"]["after_filtering"],
            "after balancing": reports["data"]["after_filtering"],
        },
        "teacher_right": sum(r["score"] for r in train) / len(train),
        "clarifier_useful": {it["id"]: it["clarifier_score"] == 1.0 for it in items},
    }


def _labels(result: dict) -> str:
    p = result["predicted"]
    return f"{p['yes']} / {p['no']} / {p['none']}"


def target_lines(results: dict) -> list[str]:
    """Seed 004's targets, each with its measured numbers and whether it is met: a gain
    target by its point estimate, flagged when within two standard errors of nothing."""
    from afm_trainer.eval.scoring import paired_change

    phases, base = results["phases"], results["baselines"]
    a, c = phases["phaseA_direct"]["question"], phases["phaseC_dpo"]

    def gain(x: dict, y: dict, target: float) -> str:
        """x minus y, paired by item, against a target gain."""
        change, error = paired_change(y["correct_by_item"], x["correct_by_item"])
        noise = "" if abs(change) > 2 * error else ", within two standard errors of no change"
        verdict = "met" if change >= target and (target > 0 or change > 2 * error) else "NOT met"
        return (
            f"{x['accuracy']:.1%} vs {y['accuracy']:.1%}, {change:+.1%} (standard error {error:.1%}{noise}): {verdict}"
        )

    majority = base["majority answer"]
    unbalanced, balanced = phases["phaseB_cot_unbalanced"]["draft"], phases["phaseB_cot"]["draft"]
    lines = ["## Seed 004's targets", ""]
    lines.append(f"- phase A above the majority answer: {gain(a, majority, 0.0)}")
    lines.append(
        f"- phase B's predicted labels (yes / no / none of {results['items']}; half the items are yes): "
        f"unbalanced data {_labels(unbalanced)}, accuracy {unbalanced['accuracy']:.1%}; balanced "
        f"{_labels(balanced)}, accuracy {balanced['accuracy']:.1%}"
    )
    lines.append(f"- phase C at least +10 points over phase A: {gain(c['draft'], a, 0.10)}")
    lines.append(f"- phase C at least +3 points over its no-draft ablation: {gain(c['draft'], c['question'], 0.03)}")
    lines.append(
        f"- the no-draft ablation above the shuffled-draft one: {gain(c['question'], c['shuffled draft'], 0.0)}"
    )
    attribution = c["draft attribution"]
    lines.append(
        f"- at least 20% of the integrated-gradients attribution on the draft's tokens after phase C: "
        f"{attribution['mean_share']:.1%} over {attribution['items']} items (the draft is "
        f"{attribution['draft_share_of_characters']:.0%} of the prompt's characters; before phase C "
        f"{phases['phaseB_cot']['draft attribution']['mean_share']:.1%}): {'met' if attribution['mean_share'] >= 0.20 else 'NOT met'}"
    )
    copy = base["the draft's answer"]
    lines.append(
        f"- against the simplest thing that could reach it, copying the draft's answer: phase C {gain(c['draft'], copy, 0.0)}"
    )
    useful = results["clarifier_useful"]
    by_clarifier = {}
    for flag in (True, False):
        ids = [i for i, u in useful.items() if u == flag]
        by_clarifier[flag] = sum(c["draft"]["correct_by_item"][i] for i in ids) / max(len(ids), 1), len(ids)
    lines.append(
        f"- clarifying questions (judged exactly against the facts each question needs): phase C is right on "
        f"{by_clarifier[True][0]:.1%} of the {by_clarifier[True][1]} items whose draft asks for a needed fact and "
        f"{by_clarifier[False][0]:.1%} of the {by_clarifier[False][1]} whose draft asks for something else. The "
        "student model writes no clarifying questions of its own, so seed 004's question-quality win rate "
        "(its clarifiers before and after training) has nothing to compare."
    )
    return lines


def write_report(out_dir: str, results: dict, settings: dict) -> None:
    write_json(os.path.join(out_dir, "results.json"), results)
    labels = results["track_b_labels"]
    fmt = lambda counts: ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), reverse=True))  # noqa: E731
    lines = [
        "# afm-trainer self-improvement demo (seed 004)",
        "",
        f"Held-out: {results['items']} yes/no questions of 2-3 steps over the demo world's facts, half of them "
        f"yes, each with a scripted student draft ({settings['drafts']['error_rate']:.0%} of drafts wrong). "
        f"Greedy answers; the answer is the first `<answer>`.",
        "",
        f"Track B's labels: before filtering {fmt(labels['before filtering'])}; after dropping the teacher's "
        f"errors (the teacher was right on {results['teacher_right']:.1%}) {fmt(labels['after filtering'])}; "
        f"after balancing {fmt(labels['after balancing'])}.",
        "",
        "| phase | prompt | accuracy | predicted yes / no / none |",
        "|---|---|---|---|",
    ]
    for stage, name in PHASES.items():
        result = results["phases"][stage]
        trained = TRAINED_CONDITION.get(stage, DEFAULT_CONDITION)
        for condition in (trained, *(c for c in ("question", "shuffled draft") if c != trained)):
            if stage in TRAINED_CONDITION and condition != trained:
                continue
            prompt = {
                "question": "question only",
                "draft": "question + its draft",
                "shuffled draft": "question + another's draft",
            }
            ablation = "" if condition == trained else " (ablation)"
            r = result[condition]
            lines.append(f"| {name} | {prompt[condition]}{ablation} | {r['accuracy']:.1%} | {_labels(r)} |")
    for label, r in results["baselines"].items():
        lines.append(f"| baseline: {label} | | {r['accuracy']:.1%} | {_labels(r)} |")
    lines += [
        "",
        "Phase C's preference-training curves and report: `phaseC_dpo/report.md`, `phaseC_dpo/reward_curves.png`.",
        "",
        *target_lines(results),
    ]
    write_markdown(out_dir, lines)
    plot(out_dir, results)


def plot(out_dir: str, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from afm_trainer.metrics import read_metrics

    fig, (acc, labels, loss) = plt.subplots(1, 3, figsize=(16, 4))
    bars = []
    for stage, name in PHASES.items():
        for condition, result in results["phases"][stage].items():
            if condition in ("question", "draft", "shuffled draft") and not (
                stage in TRAINED_CONDITION and condition != "question"
            ):
                bars.append((f"{name.split(' (')[0]}\n{condition}", result))
    acc.bar(range(len(bars)), [r["accuracy"] for _, r in bars])
    acc.set_xticks(range(len(bars)), [n for n, _ in bars], fontsize=6, rotation=60)
    for (label, r), style in zip(results["baselines"].items(), ("--", ":", "-.")):
        acc.axhline(r["accuracy"], linestyle=style, color="grey", label=label)
    acc.set_ylim(0, 1)
    acc.set_title("held-out accuracy")
    acc.legend(fontsize=7)
    yes = [r["predicted"]["yes"] for _, r in bars]
    no = [r["predicted"]["no"] for _, r in bars]
    labels.bar(range(len(bars)), yes, label="yes")
    labels.bar(range(len(bars)), no, bottom=yes, label="no")
    labels.axhline(results["items"] / 2, color="grey", linestyle="--")
    labels.set_xticks(range(len(bars)), [n for n, _ in bars], fontsize=6, rotation=60)
    labels.set_title("predicted labels")
    labels.legend(fontsize=7)
    for stage in [s for s in PHASES if s != "phaseC_dpo"]:  # phase C's curves: phaseC_dpo/reward_curves.png
        metrics = read_metrics(os.path.join(out_dir, stage))
        steps = [s for s, m in metrics.items() if "train/loss" in m]
        loss.plot(steps, [metrics[s]["train/loss"] for s in steps], label=stage)
    loss.set_xlabel("step")
    loss.set_title("train loss of the SFT phases")
    loss.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "self_improve.png"), dpi=110)
