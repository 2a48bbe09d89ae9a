"""Held-out evaluation on the demo world's suites, scored by the world's own verifiers."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

import torch

from afm_trainer.eval.lm import extract_answer, generate
from afm_trainer.tasks.algorithmic import Task, code_example, code_prompt, normalise, verify
from afm_trainer.traces.formats import information_text
from afm_trainer.verl_ext.rewards import code_of, run_tests

SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
SUMMARY = re.compile(r"<summary>.*?</summary>\s*", re.DOTALL)


def _read_jsonl(path: str, limit: int | None) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:limit] if limit else rows


@torch.no_grad()
def run_search_agent(model, tokenizer, questions: list[str], index, max_new_tokens: int, max_searches: int) -> list[str]:
    """Greedy multi-turn rollouts: stop at </search> or end of turn; a search gets the
    tool's results as a tool turn; returns each conversation's assistant text.

    A summary-prefix model writes ``<summary>...</summary>`` before each step; the
    summary is kept in the transcript but not in the history the next step sees, since
    the earlier turns of its training contexts carry none (seed 002's dataset 1)."""
    stop_ids = [tokenizer.convert_tokens_to_ids(SEARCH_CLOSE)]
    conversations = [[{"role": "user", "content": q}] for q in questions]
    transcripts = [""] * len(questions)
    active = list(range(len(questions)))
    for _ in range(max_searches + 1):
        if not active:
            break
        # Batches of 16: later turns carry long tool results, and wider left-padded batches
        # decode slower (phase-3 model, 110 questions: 53 s in 16s, 60 s in 64s, 63 s in 128s).
        new = generate(model, tokenizer, [conversations[i] for i in active], max_new_tokens, batch_size=16,
                       stop_ids=stop_ids)  # fmt: skip
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


def _summarise(rows: list[dict], group_key: str) -> dict:
    by_group, by_difficulty = defaultdict(list), defaultdict(list)
    for r in rows:
        by_group[str(r[group_key])].append(r["correct"])
        if "difficulty" in r:
            by_difficulty[int(r["difficulty"])].append(r["correct"])
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    gold, predicted = Counter(r["gold"] for r in rows), Counter(r["predicted"] for r in rows)
    labels = [label for label, _ in gold.most_common(5)]
    return {
        "n": len(rows),
        "accuracy": mean([r["correct"] for r in rows]),
        "format_valid": mean([r["predicted"] is not None for r in rows]),
        "by_group": {k: mean(v) for k, v in sorted(by_group.items())},
        "by_difficulty": {str(k): mean(v) for k, v in sorted(by_difficulty.items())},
        # A collapse to one answer (seed 004's failure) shows as one predicted label
        # taking the mass the gold labels share.
        "label_distribution": {
            "gold": {label: gold[label] for label in labels},
            "predicted": {label: predicted.get(label, 0) for label in labels} | {"other or none": len(rows) - sum(predicted.get(l, 0) for l in labels)},
        },
    }


def code_row(task: Task, completion: str) -> dict:
    """Score a code-suite completion: its program's output on the task's input, run in the
    sandbox, judged by the task's verifier (predicted None: no program, or it failed)."""
    code = code_of(completion)
    outputs = run_tests(code, [task.x]) if code else None
    predicted = outputs[0] if outputs else None
    return {"id": task.task_id, "type": task.type, "difficulty": task.difficulty, "gold": normalise(task.answer),
            "predicted": normalise(predicted) if predicted is not None else None,
            "correct": bool(verify(task, predicted)), "completion": completion}  # fmt: skip


# code: the algorithmic held-out set, solved by writing solve(x). Tokens per turn: the
# longest reference program (binary search) is 121 tokens.
MAX_NEW_TOKENS = {"algorithmic": 96, "code": 160, "qa": 96}
SUITES = tuple(MAX_NEW_TOKENS)


def evaluate_suite(model_path: str, suite: str, data: str, corpus: str | None = None, limit: int | None = None,
                   max_new_tokens: int | None = None, max_searches: int = 4) -> dict:  # fmt: skip
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if suite not in MAX_NEW_TOKENS:
        raise ValueError(f"unknown suite {suite!r}")
    max_new_tokens = max_new_tokens or MAX_NEW_TOKENS[suite]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    items = _read_jsonl(data, limit)
    rows = []
    if suite == "algorithmic":
        completions = generate(model, tokenizer, [[{"role": "user", "content": it["prompt"]}] for it in items], max_new_tokens)
        for it, completion in zip(items, completions):
            task = Task(it["id"], it["type"], it["difficulty"], it["prompt"], it["answer"], it.get("x"))
            predicted = extract_answer(completion)
            correct = verify(task, predicted)
            rows.append({"id": it["id"], "type": it["type"], "difficulty": it["difficulty"], "gold": normalise(it["answer"]),
                         "predicted": normalise(predicted) if predicted is not None else None, "correct": bool(correct),
                         "completion": completion})  # fmt: skip
        summary = _summarise(rows, "type")
    elif suite == "code":
        # Seed 003's protocol: the model writes solve(x) from a solved example of the
        # item's kind; the sandbox runs it on the item's input; the verifier judges the output.
        tasks = [Task(it["id"], it["type"], it["difficulty"], it["prompt"], it["answer"], it.get("x")) for it in items]
        completions = generate(model, tokenizer, [[{"role": "user", "content": code_prompt(code_example(t))}] for t in tasks], max_new_tokens)
        rows = [code_row(task, completion) for task, completion in zip(tasks, completions)]
        summary = _summarise(rows, "type")
    elif suite == "qa":
        from afm_trainer.tools.search import SearchIndex

        index = SearchIndex.from_jsonl(corpus)
        transcripts = run_search_agent(model, tokenizer, [it["question"] for it in items], index, max_new_tokens, max_searches)
        for it, transcript in zip(items, transcripts):
            predicted = extract_answer(transcript)
            rows.append({"id": it["qid"], "hops": it["hops"], "difficulty": it["hops"], "gold": normalise(it["answer"]),
                         "predicted": normalise(predicted) if predicted is not None else None,
                         "correct": predicted is not None and normalise(predicted) == normalise(it["answer"]),
                         "completion": transcript})  # fmt: skip
        summary = _summarise(rows, "hops")
        # How often the agent writes a <summary> (phase 3 of the progressive recipe teaches it)
        summary["summary_rate"] = sum("<summary>" in r["completion"] for r in rows) / max(len(rows), 1)
    return {"suite": suite, "model": model_path, **summary, "predictions": rows}


def majority_baseline(train_answers: dict[str, list[str]], rows: list[dict], group_key: str) -> dict:
    """Accuracy of always answering the most frequent training answer of the item's
    group: overall and by difficulty (rows without one count only overall)."""
    majority = {g: Counter(normalise(a) for a in answers).most_common(1)[0][0] for g, answers in train_answers.items() if answers}
    hits, by_difficulty = [], defaultdict(list)
    for r in rows:
        hit = majority.get(str(r[group_key])) == r["gold"]
        hits.append(hit)
        if "difficulty" in r:
            by_difficulty[int(r["difficulty"])].append(hit)
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    return {"overall": mean(hits), "by_difficulty": {str(d): mean(v) for d, v in sorted(by_difficulty.items())}}
