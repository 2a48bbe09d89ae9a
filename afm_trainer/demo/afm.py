"""The AFM chain's embedded default (``make demo-afm``): seed 001's comparison, measured.

``bash recipes/train_afm.sh NPROC OUT_DIR`` with no MODEL and no data builds, under
``OUT_DIR/embedded/``: the demo world's Planner -> Coder -> Reviewer chains (the
teacher's Reviewer rejects a share of first programs, and the Coder rewrites them), a
tiny model, and the four training sets (afm_trainer.data.agent_chains). It trains the
AFM on whole chains and one model per role, each from the same tiny model, then serves
the held-out algorithmic tasks both ways (afm_trainer.eval.agent_chain): the multi-agent
system (three models, a controller, one call per agent turn) and the AFM (one model, one
call), batched for accuracy and throughput and one task at a time for latency. Beside
them, the nearest-training-chain baseline: the program of the training chain whose task
is nearest the item's, run the same way. Writes ``OUT_DIR/report.md``, ``results.json``
and ``afm_vs_mas.png``. Every step is skipped when its output is already complete.
"""

from __future__ import annotations

import json
import os
import time

from afm_trainer.demo import load_settings
from afm_trainer.demo.report import write_json
from afm_trainer.recipes.chain.main import Chain, StageFailed, train_stages
from afm_trainer.recipes.common import RecipeArgs, write_markdown
from afm_trainer.suites.base import read_jsonl

SYSTEMS = ("multi-agent system", "AFM")
ROLE_STAGES = {"<|planner|>": "mas_planner", "<|coder|>": "mas_coder", "<|reviewer|>": "mas_reviewer"}


def embedded_paths(out_dir: str) -> dict:
    root = os.path.join(os.path.abspath(out_dir), "embedded")
    return {"root": root, **{name: os.path.join(root, name) for name in ("model", "world", "data")}}


def prepare(out_dir: str, settings: dict) -> dict:
    """Build the world, the model and the training sets (each skipped when complete)."""
    from afm_trainer.data.agent_chains import write_chain_data
    from afm_trainer.models.tiny import build_tiny_model
    from afm_trainer.world.make_world import make_world

    paths = embedded_paths(out_dir)
    world = settings["world"]
    if not os.path.isfile(os.path.join(paths["world"], "manifest.json")):
        print("[prepare] writing the demo world's agent chains (each program checked in the sandbox)", flush=True)
        make_world(
            paths["world"],
            n_heldout=world["n_heldout"],
            algo_per_cell={int(k): v for k, v in world["algo_per_cell"].items()},
            chain_retry=world["chain_retry"],
        )
    if not os.path.isfile(os.path.join(paths["model"], "config.json")):
        print("[prepare] building the tiny model", flush=True)
        build_tiny_model(paths["model"], size=settings["model"]["size"])
    if not os.path.isfile(os.path.join(paths["data"], "report.json")):
        print("[prepare] the data pipeline: the AFM's set and one per role", flush=True)
        chains = os.path.join(paths["world"], "traces", "agent_chain.jsonl")
        report = write_chain_data(chains, paths["data"], min_score=settings["data"]["min_score"])
        write_json(os.path.join(paths["data"], "report.json"), report)
    return paths


def run_embedded_default(args: RecipeArgs, chain: Chain) -> int:
    settings = load_settings("afm", args.get("DEMO_CONFIG"))
    paths = embedded_paths(args.out_dir) if args.dry_run else prepare(args.out_dir, settings)
    keys = {"MODEL": paths["model"], "DATA_DIR": paths["data"], **{k: str(v) for k, v in settings["recipe"].items()}}
    args = RecipeArgs(args.nproc, args.out_dir, {**keys, **args.keys}, [*settings["overrides"], *args.overrides])
    models = {}
    try:
        for stage, model in train_stages(chain, args, model_exists=not args.dry_run):
            models[stage.folder] = model
    except StageFailed as exc:
        return exc.returncode
    if args.dry_run:
        return 0
    results = compare(paths, models, settings)
    write_json(os.path.join(args.out_dir, "results.json"), results)
    write_report(args.out_dir, results)
    plot(args.out_dir, results)
    return 0


def load_agent(model_dir: str, max_new_tokens: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from afm_trainer.eval.agent_chain import Agent

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return Agent(model, AutoTokenizer.from_pretrained(model_dir), max_new_tokens)


def load_system(name: str, models: dict[str, str], settings: dict):
    """(a function serving a list of held-out items, greedy or at a temperature, with a
    seed; the models it loaded) for ``name``."""
    from afm_trainer.eval.agent_chain import run_afm, run_mas

    ev = settings["evaluation"]
    budget = ev["max_new_tokens"]
    if name == "AFM":
        afm = load_agent(models["afm"], budget["afm"])
        return (lambda items, t=0.0, seed=0: run_afm(afm, items, ev["batch_size"], t, seed)), [afm.model]
    agents = {role: load_agent(models[folder], budget[folder]) for role, folder in ROLE_STAGES.items()}
    return (lambda items, t=0.0, seed=0: run_mas(agents, items, ev["max_rounds"], ev["batch_size"], t, seed)), [
        a.model for a in agents.values()
    ]


def serve(name: str, models: dict[str, str], items: list[dict], settings: dict) -> dict:
    """One system on the held-out items: greedy and batched (accuracy, tokens,
    throughput), one task at a time on the first ``latency_items`` (latency), then
    sampled at ``sampled_temperature`` (where a buggy program and the Reviewer's
    rejection can happen)."""
    from afm_trainer.eval.agent_chain import latencies, parameter_bytes, summary

    ev = settings["evaluation"]
    run, loaded = load_system(name, models, settings)
    print(f"[evaluate] {name}: {len(items)} held-out tasks, batched", flush=True)
    start = time.perf_counter()
    rows = run(items)
    seconds = time.perf_counter() - start
    print(f"[evaluate] {name}: {ev['latency_items']} tasks one at a time", flush=True)
    latency = latencies(run, items[: ev["latency_items"]])
    sampled = {}
    for seed in range(ev["sampled_runs"]):
        print(f"[evaluate] {name}: sampled at temperature {ev['sampled_temperature']}, seed {seed}", flush=True)
        start = time.perf_counter()
        sampled_rows = run(items, ev["sampled_temperature"], seed)
        sampled[str(seed)] = summary(sampled_rows, time.perf_counter() - start)
    return {
        **summary(rows, seconds, latency),
        "models": len(loaded),
        "weights_mb": round(parameter_bytes(loaded) / 2**20, 1),
        "by_difficulty": by_difficulty(rows),
        "sampled": sampled,
        "rows": rows,
    }


def heldout_items(paths: dict) -> list[dict]:
    return read_jsonl(os.path.join(paths["world"], "heldout", "algorithmic.jsonl"))


def compare(paths: dict, models: dict[str, str], settings: dict) -> dict:
    items = heldout_items(paths)
    results = {"items": len(items), "settings": settings}
    results["systems"] = {name: serve(name, models, items, settings) for name in SYSTEMS}
    results["nearest training chain"] = nearest_chain_baseline(paths, items)
    return results


def by_difficulty(rows: list[dict]) -> dict[str, float]:
    from afm_trainer.eval.scoring import summarise

    return summarise(rows, "type")["by_difficulty"]


def nearest_chain_baseline(paths: dict, items: list[dict]) -> dict:
    """Each held-out task answered by the last program of the training chain whose task
    is nearest it (BM25), run as the systems' programs are: recall of the training set."""
    from afm_trainer.eval.agent_chain import CODER, score_chain
    from afm_trainer.eval.scoring import nearest_examples, summarise
    from afm_trainer.suites.base import kept

    chains = [
        c
        for c in read_jsonl(os.path.join(paths["world"], "traces", "agent_chain.jsonl"))
        if isinstance(c.get("task"), str) and kept(c, 0.5)
    ]
    programs = [[s.get("output") for s in c["trajectory"] if s.get("agent") == "Coder"][-1] for c in chains]
    nearest = nearest_examples([c["task"] for c in chains], [it["prompt"] for it in items])
    rows = [score_chain(it, [] if i is None else [(CODER, programs[i] or "")]) for it, i in zip(items, nearest)]
    scored = summarise(rows, "type")
    return {"accuracy": scored["accuracy"], "by_difficulty": scored["by_difficulty"]}


def write_report(out_dir: str, results: dict) -> None:
    s = results["systems"]
    mas, afm = s["multi-agent system"], s["AFM"]
    rows = [
        ("held-out accuracy", "accuracy", lambda v: f"{v:.1%}"),
        ("model calls per task", "calls_per_task", str),
        ("prompt tokens per task", "prompt_tokens_per_task", str),
        ("generated tokens per task", "generated_tokens_per_task", str),
        ("tasks with a rewritten program", "rewrites_per_task", lambda v: f"{v:.1%}"),
        ("latency per task, median (s)", "latency_median_s", str),
        ("latency per task, p95 (s)", "latency_p95_s", str),
        ("throughput, batched (tasks/s)", "tasks_per_second", str),
        ("models served", "models", str),
        ("weights in memory (MB)", "weights_mb", str),
    ]
    lines = [
        "# Seed 001 on the demo world: one model for the whole chain vs the multi-agent system",
        "",
        f"{results['items']} held-out algorithmic tasks; each system's last program runs in the sandbox on "
        "the task's input. Latency: tasks served one at a time; throughput: all tasks in batches.",
        "",
        "| | multi-agent system | AFM | AFM / multi-agent |",
        "|---|---|---|---|",
    ]
    for label, key, fmt in rows:
        a, b = mas.get(key), afm.get(key)
        ratio = f"{b / a:.2f}x" if isinstance(a, int | float) and isinstance(b, int | float) and a else ""
        lines.append(f"| {label} | {fmt(a) if a is not None else ''} | {fmt(b) if b is not None else ''} | {ratio} |")
    baseline = results["nearest training chain"]["accuracy"]
    lines += [
        "",
        f"Nearest training chain (its program reused, run the same way): {baseline:.1%}. Where it matches the "
        "systems, held-out accuracy measures recall of the training chains' programs, and the comparison is one of cost.",
        "",
        "Sampled at the temperature of the settings (each run over every task; accuracy, and the share of tasks "
        "whose Reviewer rejected a program and got a rewrite):",
        "",
        "| run | multi-agent accuracy | AFM accuracy | multi-agent rewrites | AFM rewrites |",
        "|---|---|---|---|---|",
    ]
    for seed, m in mas["sampled"].items():
        a = afm["sampled"][seed]
        lines.append(
            f"| seed {seed} | {m['accuracy']:.1%} | {a['accuracy']:.1%} | "
            f"{m['rewrites_per_task']:.1%} | {a['rewrites_per_task']:.1%} |"
        )
    lines += [
        "",
        "Accuracy by difficulty (greedy):",
        "",
        "| difficulty | " + " | ".join(mas["by_difficulty"]) + " |",
        "|---|" + "---|" * len(mas["by_difficulty"]),
    ]
    for name in SYSTEMS:
        lines.append(f"| {name} | " + " | ".join(f"{v:.0%}" for v in s[name]["by_difficulty"].values()) + " |")
    nearest = results["nearest training chain"]["by_difficulty"]
    lines.append("| nearest training chain | " + " | ".join(f"{v:.0%}" for v in nearest.values()) + " |")
    write_markdown(out_dir, lines)


def plot(out_dir: str, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["systems"]
    panels = [
        ("held-out accuracy", "accuracy"),
        ("model calls per task", "calls_per_task"),
        ("tokens per task (prompt + generated)", None),
        ("latency per task, median (s)", "latency_median_s"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (title, key) in zip(axes, panels):
        values = [
            s[n]["prompt_tokens_per_task"] + s[n]["generated_tokens_per_task"] if key is None else s[n][key]
            for n in SYSTEMS
        ]
        ax.bar(SYSTEMS, values, color=["tab:gray", "tab:blue"])
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = os.path.join(out_dir, "afm_vs_mas.png")
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    print(json.dumps({n: {k: v for k, v in s[n].items() if k != "rows"} for n in SYSTEMS}), flush=True)
