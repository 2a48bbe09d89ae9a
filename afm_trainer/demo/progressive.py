"""The progressive recipe's embedded default (``make demo``).

``bash recipes/train_progressive.sh NPROC OUT_DIR`` with no MODEL and no data builds
everything under ``OUT_DIR/embedded/``: the tiny model, the demo world's trajectories
(afm_trainer.world.make_world), the search-agent data pipeline with extractive summaries,
the algorithmic teacher traces and the Coder turns of the agent chains for phase 1, and
replay samples for phases 2 and 3. When the settings name a ``reasoning_stage``, it runs
first, as phase 0, on the teacher's worked solutions of many fresh easy algorithmic
tasks (``world.worked_solutions_per_cell``) beside phase 1's sets: a model that starts
from nothing carries out worked steps only after tens of thousands of them; phases 2
and 3 then replay worked solutions too. The demo then
evaluates the untrained model and each phase's final model on the held-out suites, and
writes ``OUT_DIR/report.md``, ``results.json`` and PNG plots (afm_trainer.demo.report).
Every step is skipped when its output is already complete, so a re-run resumes.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict

from afm_trainer.demo import load_settings
from afm_trainer.recipes.chain.main import Chain, StageFailed, parse_stage, train_stages
from afm_trainer.recipes.common import RecipeArgs, RecipeError


def embedded_paths(out_dir: str) -> dict:
    root = os.path.join(os.path.abspath(out_dir), "embedded")
    names = ("model", "world", "worked_solutions", "data", "algorithmic", "code", "replay")
    return {"root": root, **{name: os.path.join(root, name) for name in names}}


def run_embedded_default(args: RecipeArgs, chain: Chain) -> int:
    from afm_trainer.demo import report

    settings = load_settings("progressive", args.get("DEMO_CONFIG"))
    chain = with_reasoning_stage(chain, settings)  # a bad stage is refused before the minutes of preparing
    paths = embedded_paths(args.out_dir) if args.dry_run else prepare(args.out_dir, settings)
    args.keys = {**embedded_keys(paths, settings), **args.keys}
    evaluate = not args.dry_run  # a dry run of the demo has built nothing yet
    stages = (
        {"untrained": report.evaluate_stage(args.out_dir, "untrained", paths["model"], settings)} if evaluate else {}
    )
    try:
        for stage, model in train_stages(chain, args, model_exists=evaluate):
            if evaluate:
                stages[stage.folder] = report.evaluate_stage(args.out_dir, stage.folder, model, settings)
    except StageFailed as exc:
        return exc.returncode
    if args.dry_run:
        return 0
    print(f"final model: {model}", flush=True)
    report.write_report(args.out_dir, stages, settings)
    return 0


def with_reasoning_stage(chain: Chain, settings: dict) -> Chain:
    """The chain with the settings' ``reasoning_stage`` (if any) first, phase 1 starting from it."""
    if not settings.get("reasoning_stage"):
        return chain
    stage = parse_stage(settings["reasoning_stage"], "the demo settings' reasoning_stage", [])
    data = settings["data"]
    if "phase1_sets_in_reasoning_stage" not in data or "worked_solutions" not in data["replay_rows"]:
        raise RecipeError(
            "the demo settings' reasoning_stage needs data.phase1_sets_in_reasoning_stage and "
            "data.replay_rows.worked_solutions (afm_trainer/demo/config/progressive.yaml has both)"
        )
    return Chain(chain.name, [stage, *chain.stages], chain.embedded_default, chain.keys)


def prepare(out_dir: str, settings: dict) -> dict:
    """Build model, world and training sets (each skipped when already complete)."""
    from afm_trainer.data.convert import convert
    from afm_trainer.data.pipeline import run_pipeline
    from afm_trainer.data.self_improve import write_without
    from afm_trainer.models.tiny import build_tiny_model
    from afm_trainer.world.make_world import make_world

    paths = embedded_paths(out_dir)
    world, data = settings["world"], settings["data"]
    if settings.get("reasoning_stage") and not world.get("worked_solutions_per_cell"):
        raise RecipeError("the demo settings' reasoning_stage needs world.worked_solutions_per_cell")
    traces = os.path.join(paths["world"], "traces")
    if not os.path.isfile(os.path.join(paths["world"], "manifest.json")):
        print("[prepare] writing the demo world", flush=True)
        make_world(
            paths["world"],
            n_train=world["n_train"],
            n_heldout=world["n_heldout"],
            algo_per_cell=world["algo_per_cell"],
            types_without_programs=world.get("types_without_programs", []),
            worked_solutions_per_cell=world.get("worked_solutions_per_cell"),
        )
    if not os.path.isfile(os.path.join(paths["model"], "config.json")):
        print("[prepare] building the tiny model (its tokenizer also learns the world's corpus)", flush=True)
        domain = os.path.join(paths["root"], "tokenizer_domain.txt")
        with open(os.path.join(paths["world"], "corpus.jsonl")) as f, open(domain, "w") as g:
            for line in f:  # titles and texts: every name of the world becomes one token
                document = json.loads(line)
                g.write(f"{document['title']}: {document['content']}\n")
        build_tiny_model(paths["model"], size=settings["model"]["size"], domain_file=domain)
    if not os.path.isfile(os.path.join(paths["data"], "summary_prefix", "val.parquet")):
        print("[prepare] running the search-agent data pipeline", flush=True)
        run_pipeline(os.path.join(traces, "search_agent.jsonl"), paths["data"], min_score=data["min_score"])
    algorithmic_sets = [("teacher_cot", paths["algorithmic"])]
    if settings.get("reasoning_stage"):
        algorithmic_sets.append(("worked_solutions", paths["worked_solutions"]))
    for name, folder in algorithmic_sets:
        train = os.path.join(folder, "train.parquet")
        if not os.path.isfile(train):
            print(f"[prepare] converting the algorithmic teacher traces ({name})", flush=True)
            os.makedirs(folder, exist_ok=True)
            no_drafts = os.path.join(folder, f"{name}_no_drafts.jsonl")
            # evaluation asks the bare question, so training must too (seed 004)
            write_without(os.path.join(traces, f"{name}.jsonl"), no_drafts, fields=("student_draft",))
            # Held-out tasks are excluded by the world, so every converted row is training data.
            convert(no_drafts, train, "teacher_cot", "multiturn", min_score=data["min_score"])
    code_train = os.path.join(paths["code"], "train.parquet")
    if not os.path.isfile(code_train):
        print("[prepare] converting the Coder turns of the agent-chain traces", flush=True)
        os.makedirs(paths["code"], exist_ok=True)
        coder_turns = os.path.join(paths["code"], "coder_turns.jsonl")
        per_type = data["code_per_type"]
        sampled, total = write_coder_turns(os.path.join(traces, "agent_chain.jsonl"), coder_turns, per_type)
        print(f"[prepare] {sampled} of {total} agent-chain traces sampled ({per_type} per task type)", flush=True)
        convert(coder_turns, code_train, "teacher_cot", "multiturn", min_score=data["min_score"])
    sources = replay_sources(paths, settings)
    if not all(os.path.isfile(os.path.join(paths["replay"], f"{name}.parquet")) for name in sources):
        print("[prepare] sampling the replay sets of phases 2 and 3", flush=True)
        write_replay(sources, paths["replay"], data["replay_rows"])
    return paths


def write_coder_turns(agent_chain: str, out_path: str, per_type: int) -> tuple[int, int]:
    """The Coder turn of ``per_type`` agent-chain traces per task type, as code-suite
    examples: the code prompt of the trace's task, the Coder's program as the answer and
    the trace's score (1 when the Reviewer's sandbox run passed). Written in the
    teacher_cot format without reasoning, so convert() accounts for each record: one
    with no Coder output or no task input is rejected there, with its reason.
    Returns (records written, traces read)."""
    from afm_trainer.suites.code import chain_code_example

    with open(agent_chain) as f:
        traces = [json.loads(line) for line in f if line.strip()]
    by_type = defaultdict(list)
    for trace in traces:
        by_type[str(trace.get("type"))].append(trace)
    rng = random.Random(0)
    with open(out_path + ".tmp", "w") as f:
        for _task_type, group in sorted(by_type.items()):
            for trace in rng.sample(group, min(per_type, len(group))):
                prompt, program = chain_code_example(trace)
                record = {"id": trace.get("id"), "score": trace.get("score")}
                if prompt is not None:
                    record["question"] = prompt
                if program is not None:
                    record["answer"] = program  # the teacher_cot parser wraps it in <answer></answer>
                f.write(json.dumps(record) + "\n")
    os.replace(out_path + ".tmp", out_path)
    return sum(min(per_type, len(g)) for g in by_type.values()), len(traces)


def phase1_sets(paths: dict) -> dict[str, str]:
    """Phase 1's training sets: the multi-turn search traces, the algorithmic teacher
    traces and the code-writing examples."""
    return {
        "multiturn": os.path.join(paths["data"], "multiturn", "train.parquet"),
        "algorithmic": os.path.join(paths["algorithmic"], "train.parquet"),
        "code": os.path.join(paths["code"], "train.parquet"),
    }


def replay_sources(paths: dict, settings: dict) -> dict[str, str]:
    """The sets phases 2 and 3 replay samples of: phase 1's, and phase 0's worked
    solutions when that stage runs (the summary phases otherwise undo what it taught)."""
    sources = phase1_sets(paths)
    if settings.get("reasoning_stage"):
        sources["worked_solutions"] = os.path.join(paths["worked_solutions"], "train.parquet")
    return sources


def write_replay(sources: dict[str, str], folder: str, rows_per_set: dict[str, int]) -> None:
    """Samples of ``sources`` (``replay_sources``) that phases 2 and 3 train on beside
    their own, so a later phase does not erase what an earlier one taught."""
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    for name, source in sources.items():
        table = pq.read_table(source)
        rows = sorted(random.Random(0).sample(range(table.num_rows), min(rows_per_set[name], table.num_rows)))
        target = os.path.join(folder, f"{name}.parquet")
        pq.write_table(table.take(rows), target + ".tmp")
        os.replace(target + ".tmp", target)


def embedded_keys(paths: dict, settings: dict) -> dict:
    """The recipe arguments of the demo: the settings' ``recipe:`` keys, the model, and
    each phase's data (phases 2 and 3: their summary set plus the replay samples)."""
    if not settings.get("recipe"):
        raise RecipeError("the demo settings have no `recipe:` section")
    keys = {"MODEL": paths["model"], "DATA_DIR": paths["data"], **{k: str(v) for k, v in settings["recipe"].items()}}
    phase1 = list(phase1_sets(paths).values())
    if settings.get("reasoning_stage"):
        # phase 1's sets listed again and again: verl's dataset concatenates the files it is given
        repeats = settings["data"]["phase1_sets_in_reasoning_stage"]
        worked = os.path.join(paths["worked_solutions"], "train.parquet")
        keys[f"{settings['reasoning_stage']['key']}_TRAIN_FILES"] = ",".join([worked] + phase1 * repeats)
    replay = [os.path.join(paths["replay"], f"{name}.parquet") for name in replay_sources(paths, settings)]
    own = {
        1: phase1,
        2: [os.path.join(paths["data"], "summary_only", "train.parquet")],
        3: [os.path.join(paths["data"], "summary_prefix", "train.parquet")],
    }
    for number, name in ((1, "multiturn"), (2, "summary_only"), (3, "summary_prefix")):
        keys[f"PHASE{number}_TRAIN_FILES"] = ",".join(own[number] + (replay if number > 1 else []))
        keys[f"PHASE{number}_VAL_FILES"] = os.path.join(paths["data"], name, "val.parquet")
    return keys
