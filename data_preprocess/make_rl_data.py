"""Prompts with rule rewards for verl's RL trainer, from the demo world's suites.

    python data_preprocess/make_rl_data.py --out DIR [--suite algorithmic|qa|code|all|algorithmic,qa] \
        [--world DEMO_DIR] [--qa_file QA.jsonl] [--difficulties 1,2,3] [--n_train 1000] [--n_val 100]

Writes DIR/train.parquet and DIR/val.parquet in verl's RL format: ``data_source``,
``prompt`` (chat messages), ``ability``, ``reward_model`` ({"style": "rule",
"ground_truth"}), ``extra_info`` (index, split, id, type, difficulty, and ``x`` and
``tests`` as JSON text, since parquet holds values of mixed types badly) and
``agent_name`` (verl's agent loop: ``tool_agent`` for qa, which needs the search tool,
``single_turn_agent`` otherwise). They are scored by afm_trainer/verl_ext/rewards.py.
--n_train and --n_val count rows per suite. Training rows are interleaved by task type
(and suite): any run of consecutive rows covers the kinds evenly.

- algorithmic: tasks of seed 42 for training; validation is the held-out suite, from
  --world DEMO_DIR (make_demo's heldout/algorithmic.jsonl, so validation is what the
  evaluation scores) or generated from seed 999. No training prompt is a held-out one.
- qa: multi-hop questions about the demo world (world seed from DEMO_DIR/manifest.json,
  else 0: serve that world's corpus to the search tool); --difficulties picks hop counts.
  With --qa_file, the user's {"question", "answer"} lines are used instead: each line is
  a row or a reject (DIR/rejects.jsonl, with its line number and reason), and the counts
  printed add up to the lines read.
- code: write ``solve(x)`` for a task type; the prompt shows one example, the tests are
  other instances of the same type and difficulty, run in the sandbox by the reward.
"""

import argparse
import itertools
import json
import math
import os
import random
import sys
import zlib

import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from afm_trainer.data.parquet_io import InputError, write_rows  # noqa: E402
from afm_trainer.tasks.algorithmic import (  # noqa: E402
    DIFFICULTIES, TYPES, Task, code_prompt, generate_suite, make_task, normalise, solution_source,
)  # fmt: skip
from afm_trainer.tasks.qa_world import build_world, make_questions  # noqa: E402

TRAIN_SEED, VAL_SEED = 42, 999  # make_demo's defaults: its training pools and held-out sets
N_CODE_TESTS = 4
QA_HOPS = (1, 2, 3)
# The demo world's questions are about fictional entities: only the search tool reaches the answers.
AGENT_FOR_SOURCE = {"afm/qa": "tool_agent", "afm/algorithmic": "single_turn_agent", "afm/code": "single_turn_agent"}

CHAT = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
EXTRA_INFO = pa.struct([
    ("index", pa.int64()), ("split", pa.string()), ("id", pa.string()), ("type", pa.string()),
    ("difficulty", pa.int64()), ("x", pa.string()), ("tests", pa.string()),
])  # fmt: skip
SCHEMA = pa.schema([
    ("data_source", pa.string()),
    ("prompt", CHAT),
    ("ability", pa.string()),
    ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
    ("extra_info", EXTRA_INFO),
    ("agent_name", pa.string()),
])  # fmt: skip



def rl_row(data_source: str, ability: str, prompt: str, ground_truth: str, **extra) -> dict:
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": prompt}],
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {name: extra.get(name) for name in EXTRA_INFO.names},
        "agent_name": AGENT_FOR_SOURCE[data_source],
    }


def _sample(items: list, n: int, seed: int) -> list:
    """n items spread over all types and difficulties (suites come ordered by type)."""
    items = list(items)
    random.Random(seed).shuffle(items)
    return items[:n]


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise InputError(f"file not found: {path} (write the demo world with python -m afm_trainer.tasks.make_demo)")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --- suites: each returns (train rows, val rows) ---


def _algorithmic_row(task: Task) -> dict:
    return rl_row("afm/algorithmic", "algorithmic", task.prompt, task.answer,
                  id=task.task_id, type=task.type, difficulty=task.difficulty, x=json.dumps(task.x))  # fmt: skip


def _per_cell(n: int, difficulties: list[int]) -> int:
    return max(1, math.ceil(n / (len(TYPES) * len(difficulties))))


def heldout_algorithmic(args) -> list[Task]:
    """The held-out algorithmic tasks: make_demo's (what the evaluation scores) or seed 999's."""
    if not args.world:
        return generate_suite(VAL_SEED, _per_cell(args.n_val, args.difficulties), difficulties=args.difficulties)
    items = _read_jsonl(os.path.join(args.world, "heldout", "algorithmic.jsonl"))
    return [Task(it["id"], it["type"], it["difficulty"], it["prompt"], it["answer"], it["x"])
            for it in items if it["difficulty"] in args.difficulties]  # fmt: skip


def algorithmic_rows(args) -> tuple[list[dict], list[dict]]:
    heldout = heldout_algorithmic(args)
    # Exclude the whole held-out set, not only the part sampled for validation.
    train = generate_suite(TRAIN_SEED, _per_cell(args.n_train, args.difficulties), difficulties=args.difficulties,
                           exclude={t.prompt for t in heldout})  # fmt: skip
    return ([_algorithmic_row(t) for t in _sample(train, args.n_train, TRAIN_SEED)],
            [_algorithmic_row(t) for t in _sample(heldout, args.n_val, VAL_SEED)])  # fmt: skip


def _qa_row(question: str, answer: str, item_id: str, hops: int | None) -> dict:
    return rl_row("afm/qa", "qa", question, answer, id=item_id, type="qa", difficulty=hops)


def qa_world_rows(args) -> tuple[list[dict], list[dict]]:
    hops = tuple(d for d in args.difficulties if d in QA_HOPS)
    world_seed = 0
    if args.world:
        manifest = os.path.join(args.world, "manifest.json")
        if not os.path.isfile(manifest):
            raise InputError(f"{args.world} has no manifest.json (is it make_demo's --out folder?)")
        with open(manifest) as f:
            world_seed = json.load(f).get("world_seed", 0)
    world = build_world(world_seed)
    if args.world:
        heldout = [q for q in _read_jsonl(os.path.join(args.world, "heldout", "qa.jsonl")) if q["hops"] in hops]
        corpus = _read_jsonl(os.path.join(args.world, "world", "corpus.jsonl"))
        if corpus[:1] != world["documents"][:1]:  # the questions must be about the corpus the tool searches
            raise InputError(f"{args.world}/world/corpus.jsonl is not the world of seed {world_seed}")
    else:
        heldout = [vars(q) for q in make_questions(world, VAL_SEED, args.n_val, hops)]
    train = make_questions(world, TRAIN_SEED, args.n_train, hops, exclude={q["question"] for q in heldout})
    return ([_qa_row(q.question, q.answer, q.qid, q.hops) for q in train],
            [_qa_row(q["question"], q["answer"], q["qid"], q["hops"]) for q in _sample(heldout, args.n_val, VAL_SEED)])  # fmt: skip


def _check_qa_line(line: bytes, seen: dict) -> tuple[str, str]:
    """(question, answer) of a user's line, or ValueError with the reason."""
    try:  # strict: a Latin-1 "Zürich" must be a reject, not an answer with a replacement character
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None
    try:
        record = json.loads(text.rstrip("\r\n"))  # so an error's column is on this line
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    question, answer = record.get("question"), record.get("answer")
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        answer = str(answer)  # "answer": 1912 is a fine answer
    for name, value in (("question", question), ("answer", answer)):
        if not isinstance(value, str) or not normalise(value):
            raise ValueError(f"missing or empty {name!r}")
    key = normalise(question)
    if key in seen:  # a repeat could land in train and val both
        raise ValueError(f"duplicate of the question on line {seen[key]}")
    return question, answer


def qa_file_rows(args) -> tuple[list[dict], list[dict]]:
    """The user's questions, shuffled, split into val (--n_val, at most half) and train
    (--n_train); each line is counted once: train, val, unused, rejected or blank."""
    if not os.path.isfile(args.qa_file):
        raise InputError(f"file not found: {args.qa_file}")
    rows, rejects, seen, blank, lines = [], [], {}, 0, 0
    with open(args.qa_file, "rb") as f:
        for number, line in enumerate(f, 1):
            lines = number
            if not line.strip():
                blank += 1
                continue
            try:
                question, answer = _check_qa_line(line, seen)
            except ValueError as exc:
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                rejects.append({"line": number, "reason": str(exc), "text": text})
                continue
            seen[normalise(question)] = number
            rows.append(_qa_row(question, answer, f"line {number}", None))
    with open(os.path.join(args.out, "rejects.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rejects)
    rows = _sample(rows, len(rows), TRAIN_SEED)
    n_val = min(args.n_val, len(rows) // 2)
    val, train = rows[:n_val], rows[n_val : n_val + args.n_train]
    unused = len(rows) - len(val) - len(train)
    print(f"{args.qa_file}: {lines} lines = {len(train)} train + {len(val)} val + {unused} unused (over --n_train) "
          f"+ {len(rejects)} rejected (see {args.out}/rejects.jsonl) + {blank} blank")  # fmt: skip
    return train, val


def _code_row(task: Task) -> dict:
    # The tests are other instances than the example, so copying the example does not pass them.
    seed = zlib.crc32(task.task_id.encode())
    tests = [make_task(seed, task.type, task.difficulty, i) for i in range(N_CODE_TESTS)]
    return rl_row("afm/code", "code", code_prompt(task), solution_source(task.type), id=task.task_id, type=task.type,
                  difficulty=task.difficulty, tests=json.dumps([{"x": t.x, "expected": t.answer} for t in tests]))  # fmt: skip


def code_rows(args) -> tuple[list[dict], list[dict]]:
    val = generate_suite(VAL_SEED, _per_cell(args.n_val, args.difficulties), difficulties=args.difficulties)
    # A training prompt shows its example's answer: never one of a held-out algorithmic task.
    exclude = {t.prompt for t in val + heldout_algorithmic(args)}
    train = generate_suite(TRAIN_SEED, _per_cell(args.n_train, args.difficulties), difficulties=args.difficulties, exclude=exclude)
    return ([_code_row(t) for t in _sample(train, args.n_train, TRAIN_SEED)],
            [_code_row(t) for t in _sample(val, args.n_val, VAL_SEED)])  # fmt: skip


SUITES = {
    "algorithmic": algorithmic_rows,
    "qa": lambda args: qa_file_rows(args) if args.qa_file else qa_world_rows(args),
    "code": code_rows,
}


def interleave_kinds(rows: list[dict]) -> list[dict]:
    """Round-robin over (data source, type), each kind keeping its shuffled order: every
    run of consecutive rows covers the kinds evenly. With the trainer's shuffling off (the
    RL recipe's embedded default), a step's batch is such a run, and the reward moves with
    what the model learns rather than with which kinds of task a batch happened to draw."""
    kinds: dict[tuple, list[dict]] = {}
    for row in rows:
        kinds.setdefault((row["data_source"], row["extra_info"]["type"]), []).append(row)
    return [row for layer in itertools.zip_longest(*kinds.values()) for row in layer if row is not None]


def make_rl_data(args) -> dict:
    os.makedirs(args.out, exist_ok=True)
    names = list(SUITES) if "all" in args.suite else args.suite
    splits = {"train": [], "val": []}
    for name in names:
        train, val = SUITES[name](args)
        splits["train"] += train
        splits["val"] += val
    splits["train"] = interleave_kinds(splits["train"])
    prompts = {split: {r["prompt"][0]["content"] for r in rows} for split, rows in splits.items()}
    if prompts["train"] & prompts["val"]:  # the suites exclude held-out prompts; this guards that
        raise AssertionError(f"{len(prompts['train'] & prompts['val'])} prompts are in train and val both")
    counts = {}
    for split, rows in splits.items():
        for index, row in enumerate(rows):
            row["extra_info"].update(index=index, split=split)
        write_rows(rows, SCHEMA, os.path.join(args.out, f"{split}.parquet"))
        counts[split] = {source: sum(r["data_source"] == source for r in rows) for source in sorted({r["data_source"] for r in rows})}
    return counts


def _suites(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in SUITES and n != "all"]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"suites are {', '.join([*SUITES, 'all'])} (comma-separated), got {text!r}")
    return names


def _difficulties(text: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not values or not set(values) <= set(DIFFICULTIES):
        raise argparse.ArgumentTypeError(f"difficulties must be in {DIFFICULTIES[0]}..{DIFFICULTIES[-1]}, got {text!r}")
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write verl RL parquet (prompts with rule rewards) for the demo suites.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--suite", default=["all"], type=_suites, help="algorithmic, qa, code or all; several: algorithmic,qa")
    parser.add_argument("--world", default=None, help="make_demo's output folder: validation = its held-out sets")
    parser.add_argument("--qa_file", default=None, help='JSONL of {"question", "answer"}: the qa rows instead of the world\'s')
    parser.add_argument("--difficulties", type=_difficulties, default=DIFFICULTIES, help="e.g. 1,2,3 (qa: hop counts)")
    parser.add_argument("--n_train", type=int, default=1000, help="training rows per suite (at most)")
    parser.add_argument("--n_val", type=int, default=100, help="validation rows per suite (at most)")
    args = parser.parse_args(argv)
    if args.n_train < 1 or args.n_val < 1:
        parser.error("--n_train and --n_val must be positive")
    wants_qa = bool({"qa", "all"} & set(args.suite))
    if args.qa_file and not wants_qa:
        parser.error(f"--qa_file makes qa rows, but --suite is {','.join(args.suite)}")
    if wants_qa and not args.qa_file and not set(args.difficulties) & set(QA_HOPS):
        parser.error(f"qa questions have {QA_HOPS} hops; --difficulties {args.difficulties} picks none")
    try:
        counts = make_rl_data(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for split, by_source in counts.items():
        print(f"{args.out}/{split}.parquet: {sum(by_source.values())} rows", json.dumps(by_source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
