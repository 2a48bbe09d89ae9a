"""The qa suite: multi-hop questions about the demo world's fictional entities; only the
search tool reaches the answers, so the model acts as a search agent.

RL rows: the world's questions (world seed from its manifest.json, else 0; difficulty
picks hop counts), validation its held-out set; or, with ``qa_file``, the user's
questions: a JSONL file, a JSON array or a parquet file (read by
``afm_trainer.data.convert.read_records``) of records {"question", "answer"} (a string
or a number), {"question", "answer": [aliases]} or FlashRAG's and Search-R1's
{"question", "golden_answers": [aliases]} (optional "id"). Each record becomes a row or
a reject (OUT/rejects.jsonl: where it was, the reason naming the field, the record),
with counts that add up to the lines (or records) read; a file of which no record
becomes a row is an error.

Gold answers in a row (``reward_model.ground_truth``): one answer is its text, as it has
always been; several aliases are the JSON list of them, ``["Paris", "City of Light"]``
(``ground_truth_of`` writes it, ``golden_answers`` reads it back; a single answer that
itself reads as such a list is written as a one-item list). Search-R1's RL rows carry
``{"target": [aliases]}`` instead, under their own data sources (``SEARCH_R1_SOURCES``,
the ones Search-R1's reward scores as QA): this suite scores those rows as they are.
The reward, like Search-R1's and FlashRAG's scorers, takes the best match over the
aliases; so does the held-out evaluation for items that carry aliases.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter

from afm_trainer.suites.base import (
    RLDataRequest,
    RowError,
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
from afm_trainer.traces.formats import TraceError, plain_text, type_name
from afm_trainer.world.algorithmic import normalise
from afm_trainer.world.qa_world import build_world, make_questions

TRAIN_SEED, VAL_SEED = 42, 999
TOP_UP_SEED = 1000  # validation questions beyond a world's held-out set (ids q1000-N)
HOPS = (1, 2, 3)
PARTIAL_WEIGHT = 0.5  # a near-miss ("Kalo Works" for "Kalomi Works") earns at most half an exact match
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
SUMMARY = re.compile(r"<summary>.*?</summary>\s*", re.DOTALL)
# The data sources of Search-R1's RL rows that its own reward scores as QA (exact match
# over ``reward_model.ground_truth.target``): this suite scores them too.
SEARCH_R1_SOURCES = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")


def ground_truth_of(answers: list[str]) -> str:
    """A row's ground truth: the answer's text for one answer, the JSON list of the
    aliases for several (or for one that would itself read as such a list)."""
    if len(answers) == 1 and golden_answers(answers[0]) == answers:
        return answers[0]
    return json.dumps(answers, ensure_ascii=False)


def golden_answers(ground_truth) -> list[str]:
    """The gold answers of a row's ground truth: our text (one answer, or a JSON list of
    aliases) or Search-R1's {"target": [aliases]}; RowError for any other object."""
    if isinstance(ground_truth, dict):
        target = ground_truth.get("target")
        if hasattr(target, "tolist"):  # a numpy array, when the rows went through pandas
            target = target.tolist()
        if isinstance(target, str):
            return [target]
        if not isinstance(target, list | tuple) or not target:
            raise RowError(
                f"a ground truth object needs 'target', a non-empty list of answers; got {type_name(target)}"
            )
        return [str(alias) for alias in target]
    text = str(ground_truth)
    if text.startswith("["):
        try:
            aliases = json.loads(text)
        except json.JSONDecodeError:
            return [text]
        if isinstance(aliases, list) and aliases and all(isinstance(a, str) for a in aliases):
            return aliases
    return [text]


def _row(question: str, answers: list[str], item_id: str, hops: int | None) -> dict:
    return rl_row(SUITE, question, ground_truth_of(answers), id=item_id, type="qa", difficulty=hops)


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
        [_row(q.question, [q.answer], q.qid, q.hops) for q in train],
        [_row(q["question"], [q["answer"]], q["qid"], q["hops"]) for q in val],
    )


def _answers(record: dict) -> list[str]:
    """The gold answers of a user's record: its 'golden_answers' (FlashRAG's and
    Search-R1's alias list) if it has them, else its 'answer' (a string, a number or a
    list of aliases); aliases that normalise alike are kept once. ValueError names the field."""
    field = "golden_answers" if record.get("golden_answers") is not None else "answer"
    value = record.get(field)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{field!r} is {value}, not an answer")
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)  # "answer": 1912 is a fine answer
    if value is None:
        raise ValueError("missing or empty 'answer' (or 'golden_answers', a list of aliases)")
    if isinstance(value, str) and not normalise(value):
        raise ValueError(f"missing or empty {field!r}")
    if isinstance(value, str):
        return [plain_text(value, repr(field))]
    if not isinstance(value, list):
        raise ValueError(f"{field!r} must be a string, a number or a list of strings, got {type_name(value)}")
    if not value:
        raise ValueError(f"{field!r} is an empty list")
    answers, kept = [], set()
    for i, alias in enumerate(value):
        if not isinstance(alias, str) or not normalise(alias):
            got = "an empty string" if isinstance(alias, str) else type_name(alias)
            raise ValueError(f"{field!r}[{i}] must be a non-empty string, got {got}")
        plain_text(alias, f"{field!r}[{i}]")
        if normalise(alias) not in kept:
            kept.add(normalise(alias))
            answers.append(alias)
    return answers


def _check_record(record, seen: dict[str, str]) -> tuple[str, list[str]]:
    """(question, gold answers) of a user's record, or ValueError with the reason;
    ``seen`` maps the normalised questions already taken to where they were."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    question = record.get("question")
    if not isinstance(question, str) or not normalise(question):
        hint = " (a verl RL row: give its parquet to the GRPO recipe as it is)" if "reward_model" in record else ""
        raise ValueError(f"missing or empty 'question'{hint}")
    plain_text(question, "'question'")  # the prompt is tokenized: no text becomes a control token
    answers = _answers(record)
    where = seen.get(normalise(question))
    if where is not None:  # a repeat could land in train and val both
        raise ValueError(f"duplicate of the question {'on' if where.startswith('line') else 'at'} {where}")
    return question, answers


def _count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _summary(reasons: list[str]) -> str:
    """The commonest reasons, counted (their details in parentheses left out)."""
    counts = Counter(reason.split(" (")[0] for reason in reasons).most_common()
    text = "; ".join(f"{n} {reason}" for reason, n in counts[:3])
    return text + (f"; and {len(counts) - 3} other reasons" if len(counts) > 3 else "")


def file_rows(request: RLDataRequest) -> tuple[list[dict], list[dict]]:
    """The user's questions, shuffled, split into val (n_val, at most half) and train
    (n_train); each record is counted once: train, val, unused or rejected (and, in a
    JSONL file, each blank line as blank)."""
    # Imported here: the reward imports this module, and needs none of the readers.
    from afm_trainer.data.convert import read_records
    from afm_trainer.data.parquet_io import InputError, reject_line, unreadable_reason

    path = request.qa_file
    if not os.path.isfile(path):
        raise SuiteInputError(f"file not found: {path}")
    rows, rejects, seen, records, jsonl = [], [], {}, 0, False
    try:
        for where, record in read_records(path):
            records += 1
            jsonl = where.startswith("line ")
            try:
                if isinstance(record, TraceError):  # a line that is not JSON
                    raise record
                question, answers = _check_record(record, seen)
                item_id = str(record["id"]) if record.get("id") is not None and str(record["id"]).strip() else where
            except (ValueError, RecursionError) as exc:  # RecursionError: a field nested too deep
                reason = unreadable_reason(exc) or str(exc)
                kind, number = where.split()
                kept = None if isinstance(record, TraceError) else record
                rejects.append(reject_line(where, reason, kept, **{kind: int(number)}))
                continue
            seen[normalise(question)] = where
            rows.append(_row(question, answers, item_id, None))
    except InputError as exc:
        raise SuiteInputError(str(exc)) from None
    rejects_file = os.path.join(request.out, "rejects.jsonl")
    with open(rejects_file + ".tmp", "w", encoding="utf-8") as f:  # make_rl_data commits it with the splits
        f.writelines(rejects)
    if not records:
        raise SuiteInputError(f"no records in {path} (an empty file?)")
    rows = sample(rows, len(rows), TRAIN_SEED)
    n_val = min(request.n_val, len(rows) // 2)
    val, train = rows[:n_val], rows[n_val : n_val + request.n_train]
    unused = len(rows) - len(val) - len(train)
    counted = (
        f"{len(train)} train + {len(val)} val + {unused} unused (over --n_train) "
        f"+ {len(rejects)} rejected (see {rejects_file})"
    )
    if jsonl:
        lines = _count_lines(path)
        print(f"{path}: {lines} lines = {counted} + {lines - records} blank")
    else:
        print(f"{path}: {records} records = {counted}")
    if not rows:
        reasons = _summary([json.loads(line)["reason"] for line in rejects])
        raise SuiteInputError(f"none of the {records} records of {path} gave a question and answer: {reasons}")
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


def credit(answer: str, ground_truth: str | dict, extra_info: dict) -> float:
    """The best credit over the gold answers (``golden_answers``): 1 for an exact match
    after normalising (the held-out evaluation's own criterion), else a share of the token F1."""
    return max(
        1.0 if normalise(answer) == normalise(gold) else PARTIAL_WEIGHT * token_f1(answer, gold)
        for gold in golden_answers(ground_truth)
    )


def run_search_agent(
    model, tokenizer, questions: list[str], index, max_new_tokens: int, max_searches: int
) -> list[str]:
    """Greedy multi-turn rollouts: stop at </search> or end of turn; a search gets the
    tool's results as a tool turn; returns each conversation's assistant text.

    A summary-prefix model writes ``<summary>...</summary>`` before each step; the
    summary is kept in the transcript but not in the history the next step sees, since
    the earlier turns of its training contexts carry none (seed 002's dataset 1)."""
    from afm_trainer.eval.lm import generate
    from afm_trainer.tools.search import shown_documents
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
                docs, _ = shown_documents(index.search([query], 3)[0] if query else [])  # as the RL tool shows them
                conversations[i].append({"role": "tool", "content": information_text(docs)})
                still.append(i)
        active = still
    return transcripts


def prompt_of(item: dict) -> str:
    return item["question"]


def item_answers(item: dict) -> list[str]:
    """A held-out item's gold answers: its 'golden_answers', else its 'answer' (text or a list of aliases)."""
    answers = item.get("golden_answers") or item["answer"]
    return [answers] if isinstance(answers, str) else [str(a) for a in answers]


def score(item: dict, transcript: str) -> dict:
    """A held-out item's row: the transcript's first answer, right if it is one of the
    gold answers (the row's gold is the first of them)."""
    predicted = first_answer(transcript)
    answers = item_answers(item)
    correct = predicted is not None and normalise(predicted) in {normalise(a) for a in answers}
    return scored_row(item["qid"], {"hops": item["hops"]}, item["hops"], answers[0], predicted, correct, transcript)


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
        agent="afm_tag_agent",
        heldout_file="qa.jsonl",
        group_key="hops",
        max_new_tokens=96,
        easy_tiers=("1", "2"),
        rl_rows=rl_rows,
        foreign_sources=SEARCH_R1_SOURCES,
        extract=answer_of,
        credit=credit,
        evaluate=evaluate,
        training_answers=answers_by_hops,
        prompt_of=prompt_of,
        score=score,
        training_examples=training_examples,
    )
)
