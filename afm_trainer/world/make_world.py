"""Write a demo world: trajectories for training and held-out sets for evaluation.

    python -m afm_trainer.world.make_world --out DIR [--n_train 600] [--n_heldout 200] [--seed 42]
        [--heldout_seed 999] [--wrong 0.05] [--malformed 0.03] [--yes_ratio 0.5] [--algo_per_cell N]
        [--types_without_programs fibonacci,two_sum] [--worked_solutions_per_cell N] [--chain_retry 0.2]

DIR/corpus.jsonl                       the QA world's documents (serve it with search_server)
DIR/traces/search_agent.jsonl          multi-hop QA traces with real search results
DIR/traces/agent_chain.jsonl           Planner -> Coder -> Reviewer (sandbox-checked; a rejection sends the Coder back)
DIR/traces/teacher_cot.jsonl           question, answer, student draft, teacher reasoning
DIR/traces/worked_solutions.jsonl      more teacher_cot records, of fresh tasks (when asked for)
DIR/heldout/algorithmic.jsonl          held-out algorithmic tasks (prompt, answer, type, difficulty, x)
DIR/heldout/qa.jsonl                   held-out multi-hop questions (question, answer, hops)
DIR/manifest.json                      seeds, counts, noise
Held-out instances come from another seed and are removed from the training pools.
The agent chains are the world's only programs; ``types_without_programs`` leaves some
problem types out of them, so the code suite's items of those types ask for programs
that no training example contains (generalisation, where the other types test recall).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import asdict

from afm_trainer.tools.search import SearchIndex
from afm_trainer.world.algorithmic import DIFFICULTIES, TYPES, generate_suite
from afm_trainer.world.qa_world import build_world, make_questions, questions_to_jsonl, save_world
from afm_trainer.world.teacher import Noise, agent_chain_record, balance_yes_no, search_agent_record, teacher_cot_record

DEFAULT_NOISE = Noise(wrong=0.05, malformed=0.03)


def write_jsonl(path: str, records) -> int:
    """``records`` as JSONL at ``path``, written whole or not at all; returns how many."""
    count = 0
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
            count += 1
    os.replace(path + ".tmp", path)
    return count


def algorithmic_tasks(seed: int, per_cell: int | dict[int, int], exclude: set[str]) -> list:
    """``per_cell`` tasks of every (type, difficulty), or ``{difficulty: count}``."""
    per_difficulty = per_cell if isinstance(per_cell, dict) else {d: per_cell for d in DIFFICULTIES}
    return [
        t
        for d, n in sorted(per_difficulty.items())
        if n > 0
        for t in generate_suite(seed, n, difficulties=[d], exclude=exclude)
    ]


def make_world(
    out: str,
    n_train: int = 600,
    n_heldout: int = 200,
    seed: int = 42,
    heldout_seed: int = 999,
    noise: Noise = DEFAULT_NOISE,
    yes_ratio: float | None = 0.5,
    world_seed: int = 0,
    algo_per_cell: int | dict[int, int] | None = None,
    types_without_programs: list[str] | tuple[str, ...] = (),
    worked_solutions_per_cell: int | dict[int, int] | None = None,
    chain_retry: float = 0.0,
) -> dict:
    unknown = sorted(set(types_without_programs) - set(TYPES))
    if unknown:
        raise ValueError(f"types_without_programs: unknown problem types {unknown}; choose from {TYPES}")
    started = time.time()
    for folder in ("traces", "heldout"):
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    rng = random.Random(seed)

    world = build_world(world_seed)
    save_world(world, os.path.join(out, "corpus.jsonl"))
    index = SearchIndex(world["documents"])
    qa_heldout = make_questions(world, heldout_seed, n_heldout)
    qa_train = make_questions(world, seed, n_train, exclude={q.question for q in qa_heldout})
    questions_to_jsonl(qa_heldout, os.path.join(out, "heldout", "qa.jsonl"))

    cells = 11 * 10  # types x difficulties
    algo_heldout = generate_suite(heldout_seed, max(1, n_heldout // cells))
    held_prompts = {t.prompt for t in algo_heldout}
    # algo_per_cell may weight difficulties ({1: 30, ..., 10: 2}): a curriculum that spends
    # a small model's training on the tiers it can learn (seed 001).
    algo_train = algorithmic_tasks(seed, algo_per_cell or max(1, -(-n_train // cells)), held_prompts)
    algo_train = balance_yes_no(algo_train, yes_ratio, rng)
    write_jsonl(
        os.path.join(out, "heldout", "algorithmic.jsonl"),
        (
            {
                "id": t.task_id,
                "prompt": t.prompt,
                "answer": t.answer,
                "type": t.type,
                "difficulty": t.difficulty,
                "x": t.x,
            }
            for t in algo_heldout
        ),
    )

    counts = {
        "search_agent": write_jsonl(
            os.path.join(out, "traces", "search_agent.jsonl"),
            (search_agent_record(q, index, rng, noise.draw(rng)) for q in qa_train),
        ),
        "agent_chain": write_jsonl(
            os.path.join(out, "traces", "agent_chain.jsonl"),
            (
                agent_chain_record(t, rng, noise.draw(rng), chain_retry)
                for t in algo_train
                if t.type not in types_without_programs
            ),
        ),
        "teacher_cot": write_jsonl(
            os.path.join(out, "traces", "teacher_cot.jsonl"),
            (teacher_cot_record(t, rng, noise.draw(rng)) for t in algo_train),
        ),
        "heldout_algorithmic": len(algo_heldout),
        "heldout_qa": len(qa_heldout),
    }
    if worked_solutions_per_cell:
        # seed + 1: tasks other than algo_train's; the held-out ones stay excluded
        worked = algorithmic_tasks(seed + 1, worked_solutions_per_cell, held_prompts)
        counts["worked_solutions"] = write_jsonl(
            os.path.join(out, "traces", "worked_solutions.jsonl"),
            (teacher_cot_record(t, rng, noise.draw(rng)) for t in balance_yes_no(worked, yes_ratio, rng)),
        )
    manifest = {
        "seed": seed,
        "heldout_seed": heldout_seed,
        "world_seed": world_seed,
        "noise": asdict(noise),
        "yes_ratio": yes_ratio,
        "chain_retry": chain_retry,
        "types_without_programs": sorted(types_without_programs),
        "counts": counts,
        "seconds": round(time.time() - started, 1),
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write the demo world's trajectories and held-out sets.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n_train", type=int, default=600, help="training trajectories per format (about)")
    parser.add_argument("--n_heldout", type=int, default=200, help="held-out items per suite (about)")
    parser.add_argument(
        "--algo_per_cell",
        type=int,
        default=None,
        help="algorithmic training tasks per (type, difficulty); default n_train / 110",
    )
    parser.add_argument(
        "--worked_solutions_per_cell",
        type=int,
        default=None,
        help="also write traces/worked_solutions.jsonl: teacher reasoning for this many fresh tasks per (type, difficulty)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--heldout_seed", type=int, default=999)
    parser.add_argument("--wrong", type=float, default=0.05, help="fraction of records with a wrong answer")
    parser.add_argument("--malformed", type=float, default=0.03, help="fraction of malformed records")
    parser.add_argument(
        "--chain_retry",
        type=float,
        default=0.0,
        help="share of agent chains whose first program the Reviewer rejects before the right one",
    )
    parser.add_argument("--yes_ratio", type=float, default=0.5, help="share of 'yes' among yes/no tasks")
    parser.add_argument(
        "--types_without_programs",
        default="",
        help="comma-separated problem types with no agent chains: the code suite's items of them are unseen programs",
    )
    args = parser.parse_args(argv)
    if args.seed == args.heldout_seed:
        parser.error("--seed and --heldout_seed must differ")
    try:  # make_world refuses unknown problem types before it writes anything
        manifest = make_world(
            args.out,
            args.n_train,
            args.n_heldout,
            args.seed,
            args.heldout_seed,
            Noise(args.wrong, args.malformed),
            args.yes_ratio,
            algo_per_cell=args.algo_per_cell,
            types_without_programs=[t for t in args.types_without_programs.split(",") if t],
            worked_solutions_per_cell=args.worked_solutions_per_cell,
            chain_retry=args.chain_retry,
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(json.dumps(manifest["counts"]), f"in {manifest['seconds']} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
