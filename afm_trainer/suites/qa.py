"""The qa suite: multi-hop questions about the demo world's fictional entities; only the
search tool reaches the answers, so the model acts as a search agent.

RL rows: the world's questions (world seed from its manifest.json, else 0; difficulty
picks hop counts), validation its held-out set; or, with ``qa_file``, the user's
{"question", "answer"} lines, each a row or a reject (OUT/rejects.jsonl, with its line
number and reason), with counts that add up to the lines read.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter

from afm_trainer.suites.base import (
    RLDataRequest,
    Suite,
    SuiteInputError,
    answers_by_group,
    read_jsonl,
    register,
    rl_row,
    sample,
    scored_row,
    trace_examples,
)
from afm_trainer.suites.responses import answer_of, first_answer
from afm_trainer.world.algorithmic import normalise
from afm_trainer.world.qa_world import build_world, make_questions

TRAIN_SEED, VAL_SEED = 42, 999
TOP_UP_SEED = 1000  # validation questions beyond a world's held-out set (ids q1000-N)
HOPS = (1, 2, 3)
PARTIAL_WEIGHT = 0.5  # a near-miss ("Kalo Works" for "Kalomi Works") earns at most half an exact match
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
SUMMARY = re.compile(r"<summary>.*?</summary>\s*", re.DOTALL)


def _row(question: str, answer: str, item_id: str, hops: int | None) -> dict:
    return rl_row(SUITE, question, answer, id=item_id, type="qa", difficulty=hops)


def world_rows(request: RLDataRequest) -> tuple[list[dict], list[dict]]:
    hops = tuple(d for d in request.difficulties if d in HOPS)
    world_seed = 0
    if request.world:
        manifest = os.path.join(request.world, "manifest.json")
        if not os.path.isfile(manifest):
            raise SuiteInputError(f"{request.world} has no manifest.json (is it make_world's --out folder?)")
        with open(manifest) as f:
            world_seed = json.load(f).get("world_seed", 0)
    world = build_world(world_seed)
    if request.world:
        world_heldout = read_jsonl(os.path.join(request.world, "heldout", "qa.jsonl"))
        corpus = read_jsonl(os.path.join(request.world, "corpus.jsonl"))
        if corpus[:1] != world["documents"][:1]:  # the questions must be about the corpus the tool searches
            raise SuiteInputError(f"{request.world}/corpus.jsonl is not the world of seed {world_seed}")
        never_train = {q["question"] for q in world_heldout}  # kept out of training, whether in val or not
        val = sample([q for q in world_heldout if q["hops"] in hops], request.n_val, VAL_SEED)
        if len(val) < request.n_val:
            # More validation items than the world holds out: new questions that no
            # training trace of the world asks either, so they stay unseen by its SFT.
            seen = never_train | {q for q, _ in trace_examples(agent_traces(request.world), "question")}
            val += [vars(q) for q in make_questions(world, TOP_UP_SEED, request.n_val - len(val), hops, exclude=seen)]
    else:
        val = [vars(q) for q in make_questions(world, VAL_SEED, request.n_val, hops)]
        never_train = set()
    train = make_questions(world, TRAIN_SEED, request.n_train, hops, exclude=never_train | {q["question"] for q in val})
    return (
        [_row(q.question, q.answer, q.qid, q.hops) for q in train],
        [_row(q["question"], q["answer"], q["qid"], q["hops"]) for q in val],
    )


def _check_line(line: bytes, seen: dict) -> tuple[str, str]:
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


def file_rows(request: RLDataRequest) -> tuple[list[dict], list[dict]]:
    """The user's questions, shuffled, split into val (n_val, at most half) and train
    (n_train); each line is counted once: train, val, unused, rejected or blank."""
    path = request.qa_file
    if not os.path.isfile(path):
        raise SuiteInputError(f"file not found: {path}")
    rows, rejects, seen, blank, lines = [], [], {}, 0, 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            lines = number
            if not line.strip():
                blank += 1
                continue
            try:
                question, answer = _check_line(line, seen)
            except ValueError as exc:
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                rejects.append({"line": number, "reason": str(exc), "text": text})
                continue
            seen[normalise(question)] = number
            rows.append(_row(question, answer, f"line {number}", None))
    with open(os.path.join(request.out, "rejects.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rejects)
    rows = sample(rows, len(rows), TRAIN_SEED)
    n_val = min(request.n_val, len(rows) // 2)
    val, train = rows[:n_val], rows[n_val : n_val + request.n_train]
    unused = len(rows) - len(val) - len(train)
    print(
        f"{path}: {lines} lines = {len(train)} train + {len(val)} val + {unused} unused (over --n_train) "
        f"+ {len(rejects)} rejected (see {request.out}/rejects.jsonl) + {blank} blank"
    )
    return train, val


def rl_rows(request: RLDataRequest) -> tuple[list[dict], list[dict]]:
    return file_rows(request) if request.qa_file else world_rows(request)


def token_f1(predicted: str, gold: str) -> float:
    """SQuAD-style F1 over the words of the normalised texts (punctuation dropped)."""
    pred, ref = re.findall(r"\w+", normalise(predicted)), re.findall(r"\w+", normalise(gold))
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def credit(answer: str, ground_truth: str, extra_info: dict) -> float:
    if normalise(answer) == normalise(ground_truth):  # the held-out evaluation's own criterion
        return 1.0
    return PARTIAL_WEIGHT * token_f1(answer, ground_truth)


def run_search_agent(
    model, tokenizer, questions: list[str], index, max_new_tokens: int, max_searches: int
) -> list[str]:
    """Greedy multi-turn rollouts: stop at </search> or end of turn; a search gets the
    tool's results as a tool turn; returns each conversation's assistant text.

    A summary-prefix model writes ``<summary>...</summary>`` before each step; the
    summary is kept in the transcript but not in the history the next step sees, since
    the earlier turns of its training contexts carry none (seed 002's dataset 1)."""
    from afm_trainer.eval.lm import generate
    from afm_trainer.traces.formats import information_text

    stop_ids = [tokenizer.convert_tokens_to_ids(SEARCH_CLOSE)]
    conversations = [[{"role": "user", "content": q}] for q in questions]
    transcripts = [""] * len(questions)
    active = list(range(len(questions)))
    for _ in range(max_searches + 1):
        if not active:
            break
        # Batches of 32: later turns carry long tool results, and wider left-padded
        # batches decode slower.
        batch = [conversations[i] for i in active]
        new = generate(model, tokenizer, batch, max_new_tokens, batch_size=32, stop_ids=stop_ids)
        still = []
        for i, text in zip(active, new):
            transcripts[i] += text
            conversations[i].append({"role": "assistant", "content": SUMMARY.sub("", text)})
            if SEARCH_OPEN in text and "<answer>" not in text:
                query = text.rsplit(SEARCH_OPEN, 1)[1].split(SEARCH_CLOSE)[0].strip()
                docs = index.search([query], 3)[0] if query else []
                conversations[i].append({"role": "tool", "content": information_text(docs)})
                still.append(i)
        active = still
    return transcripts


def prompt_of(item: dict) -> str:
    return item["question"]


def score(item: dict, transcript: str) -> dict:
    """A held-out item's row: the transcript's first answer, right if it is the gold one."""
    predicted = first_answer(transcript)
    correct = predicted is not None and normalise(predicted) == normalise(item["answer"])
    return scored_row(item["qid"], {"hops": item["hops"]}, item["hops"], item["answer"], predicted, correct, transcript)


def evaluate(run, items: list[dict]) -> list[dict]:
    from afm_trainer.tools.search import SearchIndex

    if run.temperature > 0:
        raise ValueError("the qa suite's search agent answers greedily only")

    index = SearchIndex.from_jsonl(run.corpus)
    questions = [prompt_of(it) for it in items]
    transcripts = run_search_agent(run.model, run.tokenizer, questions, index, run.max_new_tokens, run.max_searches)
    return [score(it, transcript) for it, transcript in zip(items, transcripts)]


def agent_traces(world: str) -> str:
    return os.path.join(world, "traces", "search_agent.jsonl")


def answers_by_hops(world: str) -> dict[str, list[str]]:
    """The search agent's training answers per hop count (the majority-answer baseline)."""
    return answers_by_group(agent_traces(world), "hops")


def training_examples(world: str, min_score: float | None = None) -> list[tuple[str, str]]:
    """The search agent's training (question, answer) pairs (the nearest-training-example baseline)."""
    return trace_examples(agent_traces(world), "question", min_score)


SUITE = register(
    Suite(
        name="qa",
        description="Multi-hop questions; the model searches the world's corpus (BM25 tool) and answers.",
        data_source="afm/qa",
        agent="tool_agent",
        heldout_file="qa.jsonl",
        group_key="hops",
        max_new_tokens=96,
        easy_tiers=("1", "2"),
        rl_rows=rl_rows,
        extract=answer_of,
        credit=credit,
        evaluate=evaluate,
        training_answers=answers_by_hops,
        prompt_of=prompt_of,
        score=score,
        training_examples=training_examples,
    )
)
