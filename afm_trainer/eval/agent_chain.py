"""A Planner -> Coder -> Reviewer chain on held-out algorithmic tasks, played two ways
(seed 001): by a multi-agent system, one model per role with a controller passing the
messages, and by an Agent Foundation Model, one model writing the whole chain in one call.

Both are scored the same way: the chain's last program is run in the sandbox on the
task's input and its output judged by the task's verifier (the code suite's scoring).
The multi-agent controller sends the Coder back when the Reviewer rejects, up to
``max_rounds`` programs; the AFM writes any rewrite itself, inside its one call.
What each costs is counted per task: model calls, prompt and generated tokens.
"""

from __future__ import annotations

import itertools
import re
import statistics
import time
from dataclasses import dataclass

from afm_trainer.eval.lm import generate_counted
from afm_trainer.models.special_tokens import ROLE_TOKENS
from afm_trainer.suites.algorithmic import task_of_item
from afm_trainer.suites.code import run_tests
from afm_trainer.world.algorithmic import verify

PLANNER, CODER, REVIEWER = ROLE_TOKENS
ROLE_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in ROLE_TOKENS) + ")")


@dataclass
class Agent:
    """A model and its tokenizer, and how long one of its turns may be."""

    model: object
    tokenizer: object
    max_new_tokens: int

    def call(
        self, conversations: list[list[dict]], batch_size: int, temperature: float = 0.0, seed: int = 0
    ) -> list[tuple[str, int, int]]:
        """One model call per conversation: (turn, prompt tokens, generated tokens);
        greedy, or sampled at ``temperature`` (conversation i from the stream ``seed``, i)."""
        return generate_counted(
            self.model,
            self.tokenizer,
            conversations,
            self.max_new_tokens,
            batch_size,
            temperature=temperature,
            seed=seed,
        )


def split_turns(text: str) -> list[tuple[str, str]]:
    """(role token, what that agent said) for every role token in ``text``, in order;
    text before the first role token is dropped."""
    parts = ROLE_SPLIT.split(text)
    return [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]


def approved(verdict: str) -> bool:
    """Whether a Reviewer turn approves the program (its last sentence says so)."""
    return verdict.rstrip().endswith("Approved.")


def score_chain(item: dict, turns: list[tuple[str, str]]) -> dict:
    """The chain's last program, run on the item's input in the sandbox, judged."""
    task = task_of_item(item)
    programs = [said for role, said in turns if role == CODER]
    outputs = run_tests(programs[-1], [task.x]) if programs and programs[-1] else None
    predicted = outputs[0] if outputs else None
    return {
        "id": task.task_id,
        "type": task.type,
        "difficulty": task.difficulty,
        "gold": task.answer,
        "predicted": predicted,
        "correct": bool(verify(task, predicted)),
        "programs": len(programs),
    }


def run_afm(afm: Agent, items: list[dict], batch_size: int = 16, temperature: float = 0.0, seed: int = 0) -> list[dict]:
    """The AFM: one call per task writes the whole chain."""
    replies = afm.call([[{"role": "user", "content": it["prompt"]}] for it in items], batch_size, temperature, seed)
    rows = []
    for item, (text, prompt_tokens, generated) in zip(items, replies):
        row = score_chain(item, split_turns(text))
        rows.append({**row, "calls": 1, "prompt_tokens": prompt_tokens, "generated_tokens": generated, "chain": text})
    return rows


def run_mas(
    agents: dict[str, Agent],
    items: list[dict],
    max_rounds: int = 2,
    batch_size: int = 16,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[dict]:
    """The multi-agent system: the Planner, then the Coder, then the Reviewer, each a call
    to its own model with the conversation so far; a rejection sends the Coder back, until
    ``max_rounds`` programs. Every task's call of one role goes in one batch; sampled
    calls each draw from streams of their own."""
    history = {it["id"]: [{"role": "user", "content": it["prompt"]}] for it in items}
    cost = {it["id"]: {"calls": 0, "prompt_tokens": 0, "generated_tokens": 0} for it in items}

    calls = itertools.count(1)

    def turn(role: str, ids: list[str]) -> list[str]:
        replies = agents[role].call([history[i] for i in ids], batch_size, temperature, seed * 1000 + next(calls))
        for i, (text, prompt_tokens, generated) in zip(ids, replies):
            history[i] = history[i] + [{"role": "assistant", "content": text}]  # a new list: a call keeps its own
            cost[i]["calls"] += 1
            cost[i]["prompt_tokens"] += prompt_tokens
            cost[i]["generated_tokens"] += generated
        return [text for text, _, _ in replies]

    pending = [it["id"] for it in items]
    turn(PLANNER, pending)
    for _ in range(max_rounds):
        turn(CODER, pending)
        verdicts = turn(REVIEWER, pending)
        pending = [i for i, verdict in zip(pending, verdicts) if not approved(verdict)]
        if not pending:
            break
    rows = []
    for item in items:
        text = "\n".join(m["content"] for m in history[item["id"]][1:])
        rows.append({**score_chain(item, split_turns(text)), **cost[item["id"]], "chain": text})
    return rows


def latencies(run, items: list[dict]) -> list[float]:
    """Seconds per task when tasks are served one at a time (``run`` takes a list of items)."""
    seconds = []
    for item in items:
        start = time.perf_counter()
        run([item])
        seconds.append(time.perf_counter() - start)
    return seconds


def parameter_bytes(models) -> int:
    """Memory the models' weights take (three models for the multi-agent system, one for the AFM)."""
    return sum(p.numel() * p.element_size() for m in models for p in m.parameters())


def summary(rows: list[dict], seconds: float, latency: list[float] | None = None) -> dict:
    """Accuracy and cost per task over ``rows`` (served in ``seconds`` in all, batched)."""
    n = max(len(rows), 1)
    mean = lambda key: round(sum(r[key] for r in rows) / n, 2)  # noqa: E731
    out = {
        "items": len(rows),
        "accuracy": round(sum(r["correct"] for r in rows) / n, 4),
        "calls_per_task": mean("calls"),
        "prompt_tokens_per_task": mean("prompt_tokens"),
        "generated_tokens_per_task": mean("generated_tokens"),
        "rewrites_per_task": round(sum(r["programs"] > 1 for r in rows) / n, 4),
        "tasks_per_second": round(len(rows) / seconds, 3) if seconds else None,
    }
    if latency:
        ordered = sorted(latency)
        out["latency_median_s"] = round(statistics.median(ordered), 3)
        out["latency_p95_s"] = round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 3)
    return out
