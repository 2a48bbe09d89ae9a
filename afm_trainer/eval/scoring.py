"""Held-out evaluation on a task suite, scored by the suite's own verifiers."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

from afm_trainer.eval.lm import load_model
from afm_trainer.suites import EvalRun, Suite, get_suite
from afm_trainer.suites.base import read_jsonl
from afm_trainer.world.algorithmic import normalise


def summarise(rows: list[dict], group_key: str) -> dict:
    by_group, by_difficulty = defaultdict(list), defaultdict(list)
    for r in rows:
        by_group[str(r[group_key])].append(r["correct"])
        if r.get("difficulty") is not None:
            by_difficulty[int(r["difficulty"])].append(r["correct"])
    gold, predicted = Counter(r["gold"] for r in rows), Counter(r["predicted"] for r in rows)
    labels = [label for label, _ in gold.most_common(5)]
    other = len(rows) - sum(predicted.get(label, 0) for label in labels)
    return {
        "n": len(rows),
        "accuracy": _mean([r["correct"] for r in rows]),
        "format_valid": _mean([r["predicted"] is not None for r in rows]),
        "by_group": {k: _mean(v) for k, v in sorted(by_group.items())},
        "by_difficulty": {str(k): _mean(v) for k, v in sorted(by_difficulty.items())},
        # A collapse to one answer (seed 004's failure) shows as one predicted label
        # taking the mass the gold labels share.
        "label_distribution": {
            "gold": {label: gold[label] for label in labels},
            "predicted": {label: predicted.get(label, 0) for label in labels} | {"other or none": other},
        },
        # How often the model writes a <summary> (phase 3 of the progressive recipe teaches it).
        "summary_rate": _mean(["<summary>" in r.get("completion", "") for r in rows]),
    }


def _mean(values: list) -> float:
    return sum(values) / len(values) if values else 0.0


def evaluate_suite(
    model_path: str,
    suite_name: str,
    data: str,
    corpus: str | None = None,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    max_searches: int = 4,
) -> dict:
    """Greedy answers of the model at ``model_path`` to the held-out items in ``data``,
    scored by the suite; returns the summary with every scored row in ``predictions``."""
    from transformers import AutoTokenizer

    suite = get_suite(suite_name)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = load_model(model_path)
    run = EvalRun(model, tokenizer, max_new_tokens or suite.max_new_tokens, corpus, max_searches)
    items = read_jsonl(data)
    rows = suite.evaluate(run, items[:limit] if limit else items)
    return {"suite": suite.name, "model": model_path, **summarise(rows, suite.group_key), "predictions": rows}


def majority_baseline(train_answers: dict[str, list[str]], rows: list[dict], group_key: str) -> dict:
    """Accuracy of always answering the most frequent training answer of the item's
    group: overall and by difficulty (rows without one count only overall)."""
    majority = {
        g: Counter(normalise(a) for a in answers).most_common(1)[0][0]
        for g, answers in train_answers.items()
        if answers
    }
    hits, by_difficulty = [], defaultdict(list)
    for r in rows:
        hit = majority.get(str(r[group_key])) == r["gold"]
        hits.append(hit)
        if r.get("difficulty") is not None:
            by_difficulty[int(r["difficulty"])].append(hit)
    return {"overall": _mean(hits), "by_difficulty": {str(d): _mean(v) for d, v in sorted(by_difficulty.items())}}


def nearest_example_baseline(suite: Suite, examples: list[tuple[str, str]], items: list[dict]) -> dict:
    """Accuracy of answering each held-out item with the answer, or the program, of the
    training example whose prompt is nearest the item's (``nearest_examples``), scored as
    the suite scores a model's completion (a program runs in the sandbox on the item's
    input): a baseline that memorises its training set. Overall, by group and by difficulty."""
    if suite.prompt_of is None or suite.score is None:
        raise ValueError(f"the {suite.name} suite has no prompt_of and score for the nearest-example baseline")
    nearest = nearest_examples([prompt for prompt, _ in examples], [suite.prompt_of(it) for it in items])
    rows = [suite.score(it, "" if i is None else f"<answer>{examples[i][1]}</answer>") for it, i in zip(items, nearest)]
    summary = summarise(rows, suite.group_key)
    return {"overall": summary["accuracy"], "by_group": summary["by_group"], "by_difficulty": summary["by_difficulty"]}


def nearest_examples(prompts: list[str], queries: list[str]) -> list[int | None]:
    """For each query, the index of the prompt nearest it by BM25 (bm25s, the search
    tool's library); a tie goes to the earlier prompt, and a query sharing no token with
    any prompt gets None."""
    import bm25s
    import numpy as np

    if not prompts:
        return [None] * len(queries)
    index = bm25s.BM25()
    index.index([_prompt_tokens(p) for p in prompts], show_progress=False)
    out = []
    for query in queries:
        tokens = [t for t in _prompt_tokens(query) if t in index.vocab_dict]
        scores = index.get_scores(tokens) if tokens else np.zeros(len(prompts))
        best = int(np.argmax(scores))  # the first of equal maxima
        out.append(best if scores[best] > 0 else None)
    return out


def _prompt_tokens(text: str) -> list[str]:
    """Every word, number and symbol, lowercased. Not the search tool's tokenizer: it drops
    stop words and one-character tokens, the digits, letters and operators that tell two
    algorithmic prompts apart."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def mean_and_error(values: list[float]) -> tuple[float, float]:
    """The mean of per-item values and its standard error over the items."""
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
    return mean, (variance / len(values)) ** 0.5


def paired_change(start: dict[str, float], after: dict[str, float]) -> tuple[float, float]:
    """Mean per-item change (after minus start) of a per-item score and its standard error
    over the items (pairing by item removes the spread between easy and hard items from the noise)."""
    return mean_and_error([after[i] - start[i] for i in start])


def pass_at_k(n: int, correct: int, k: int) -> float:
    """The chance that at least one of k answers, drawn without replacement from an item's
    n sampled answers of which ``correct`` are right, is right: the unbiased pass@k
    estimator of Chen et al. (2021), 1 - C(n - c, k) / C(n, k)."""
    if not 0 < k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n answers per item, got n={n}")
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)
