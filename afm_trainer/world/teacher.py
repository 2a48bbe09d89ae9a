"""A scripted teacher: trajectories in every input format of the data pipeline, made by
really acting in the demo world (real search results, real sandbox runs).

- ``search_agent_record``: reasoning, a search per fact on the question's path, the
  real BM25 results, and the answer (seed 002's format);
- ``agent_chain_record``: Planner plan, Coder solution, Reviewer verdict, decided by
  running the solution in the sandbox on test cases; a rejected program is rewritten
  (seed 001's format);
- ``teacher_cot_record``: question, answer, a student draft (right or wrong) and the
  teacher's step-by-step reasoning (seed 004's format).

``Noise`` makes a chosen fraction of records wrong (a corrupted answer, score 0) or
malformed (a field missing or broken), so filtering and rejects meet realistic data.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

from afm_trainer.tools.sandbox import run_python
from afm_trainer.world.algorithmic import YES_NO_TYPES, Task, make_task, solution_source, verify, worked_solution
from afm_trainer.world.qa_world import Question

NEED = {
    "born_in": "where {e} was born",
    "founded": "which company {e} founded",
    "country": "which country {e} is in",
    "headquarters": "where {e} has its headquarters",
    "capital": "the capital of {e}",
}
FOUND = {
    "born_in": "{e} was born in {v}.",
    "founded": "{e} founded {v}.",
    "country": "{e} is in {v}.",
    "headquarters": "{e} has its headquarters in {v}.",
    "capital": "The capital of {e} is {v}.",
}


@dataclass
class Noise:
    wrong: float = 0.0  # fraction of records with a wrong final answer (score 0)
    malformed: float = 0.0  # fraction of records with a missing or broken field

    def draw(self, rng: random.Random) -> str:
        r = rng.random()
        return "malformed" if r < self.malformed else "wrong" if r < self.malformed + self.wrong else "clean"


def _corrupt(answer: str, rng: random.Random, is_right=None) -> str:
    """A plausible wrong answer; ``is_right`` (a verifier) rules out lucky corruptions."""
    is_right = is_right or (lambda text: text.strip().lower() == answer.strip().lower())
    for _ in range(20):
        if answer.lower() in ("yes", "no"):
            wrong = "no" if answer.lower() == "yes" else "yes"
        elif answer.lstrip("-").isdigit():
            wrong = str(int(answer) + rng.choice([-2, -1, 1, 2]))
        elif answer.replace(" ", "").isdigit():  # lists of numbers: change the last one
            *head, last = answer.split()
            wrong = " ".join(head + [str(int(last) + rng.choice([1, 2]))])
        else:
            wrong = answer[::-1] if answer != answer[::-1] else answer + rng.choice("xyz")
        if not is_right(wrong):
            return wrong
    return answer + " (wrong)"


def search_agent_record(question: Question, index, rng: random.Random, kind: str = "clean") -> dict:
    trace = []
    for entity, relation, value in question.path:
        trace.append({"type": "reasoning", "content": f"I need to find {NEED[relation].format(e=entity)}."})
        query = entity  # names are rare words: BM25 puts the entity's own document first
        trace.append({"type": "search", "query": query})
        documents = index.search([query], 3)[0]
        trace.append(
            {"type": "search_result", "documents": [{"title": d["title"], "content": d["content"]} for d in documents]}
        )
        trace.append({"type": "reasoning", "content": FOUND[relation].format(e=entity, v=value)})
    answer = question.answer if kind != "wrong" else _corrupt(question.answer, rng)
    trace.append({"type": "CorrectAnswer", "content": answer})
    record = {
        "id": question.qid,
        "question": question.question,
        "trace": trace,
        "answer": answer,
        "score": 0.0 if kind == "wrong" else 1.0,
        "hops": question.hops,
    }
    if kind == "malformed":
        broken = rng.choice(["no_question", "no_answer", "bad_step"])
        if broken == "no_question":
            del record["question"]
        elif broken == "no_answer":
            record["trace"] = trace[:-1]
        else:
            record["trace"][0] = {"type": "thought", "text": "?"}
    return record


def review(task: Task, code: str, n_tests: int = 3) -> tuple[bool, str]:
    """Run the code on test cases of the task's type and difficulty; (all passed, report)."""
    seed = zlib.crc32(task.task_id.encode())  # stable across processes, unlike hash()
    cases = [task] + [make_task(seed, task.type, task.difficulty, i) for i in range(n_tests - 1)]
    program = code + "\n" + "\n".join(f"print(repr(str(solve({c.x!r}))))" for c in cases)
    result = run_python(program, timeout_s=10)
    if result.status != "ok":
        return False, f"The code did not run ({result.status}): {result.stderr.strip().splitlines()[-1:]}"
    outputs = [line.strip("'\"") for line in result.stdout.splitlines()]
    passed = sum(verify(c, out) for c, out in zip(cases, outputs))
    return passed == len(cases), f"Ran {len(cases)} tests in the sandbox: {passed} passed."


BUG = ("return", "return 1 + 0 *")  # a plausible bug: the result no longer depends on the work


def reviewer_verdict(task: Task, passed: bool) -> str:
    """The Reviewer's turn: a verdict on the code as written (seed 001's Reviewer reads the
    code; it runs nothing), so a model that plays every role can give it in the same call
    that wrote the code. The teacher decides it by running the code in the sandbox."""
    kind = task.type.replace("_", " ")
    if passed:
        return f"The code solves the {kind} problem. Approved."
    return f"The code does not solve the {kind} problem: its return value is wrong. Rejected."


def agent_chain_record(task: Task, rng: random.Random, kind: str = "clean", retry: float = 0.0) -> dict:
    """The chain, with the task's type, difficulty and input ``x`` (what its program is run
    on) beside it, so its Coder turn can become a code-suite example and the chain's
    answer is the approved program's output on ``x``.

    kind "wrong": the Reviewer approves a buggy program (a teacher error; score 0).
    ``retry``: the share of chains whose Coder first writes a buggy program, which the
    Reviewer rejects, and then the right one (drawn from the task's id, not from ``rng``,
    so the other records of a world do not change with it)."""
    code = solution_source(task.type)
    buggy = code.replace(*BUG, 1)
    if kind == "wrong":
        code = buggy
    plan = f"Plan: read the input, solve the {task.type.replace('_', ' ')} problem step by step, check it on tests, answer."
    passed, _ = review(task, code)
    answer = task.answer if passed else _corrupt(task.answer, rng, lambda a: verify(task, a))
    steps = [{"agent": "Planner", "output": plan}]
    retried = kind != "wrong" and random.Random(zlib.crc32(task.task_id.encode())).random() < retry
    if retried and not review(task, buggy)[0]:  # the bug must really fail the tests
        steps += [{"agent": "Coder", "output": buggy}, {"agent": "Reviewer", "output": reviewer_verdict(task, False)}]
    # A "wrong" chain's Reviewer approves its buggy program whatever the tests said (the
    # teacher's error; the record scores 0 when they failed).
    steps += [{"agent": "Coder", "output": code}, {"agent": "Reviewer", "output": reviewer_verdict(task, True)}]
    record = {
        "id": task.task_id,
        "task": task.prompt,
        "trajectory": steps,
        "answer": answer,
        "score": 1.0 if passed else 0.0,
        "type": task.type,
        "difficulty": task.difficulty,
        "x": task.x,
    }
    if kind == "malformed":
        record["trajectory"][rng.randrange(3)].pop("output")
    return record


def teacher_cot_record(task: Task, rng: random.Random, kind: str = "clean", draft_error: float = 0.4) -> dict:
    is_right = lambda a: verify(task, a)  # noqa: E731
    draft_answer = task.answer if rng.random() >= draft_error else _corrupt(task.answer, rng, is_right)
    answer = task.answer if kind != "wrong" else _corrupt(task.answer, rng, is_right)
    record = {
        "id": task.task_id,
        "question": task.prompt,
        "answer": answer,
        "student_draft": f"Answer: {draft_answer} - first guess.",
        "teacher_output": worked_solution(task),
        "score": 0.0 if kind == "wrong" else 1.0,
        "type": task.type,
        "difficulty": task.difficulty,
    }
    if kind == "malformed":
        record.pop(rng.choice(["question", "answer"]))
    return record


def balance_yes_no(tasks: list[Task], yes_ratio: float | None, rng: random.Random) -> list[Task]:
    """Drop yes/no tasks until their share of "yes" is yes_ratio (others are kept)."""
    if yes_ratio is None:
        return tasks
    yes = [t for t in tasks if t.type in YES_NO_TYPES and t.answer == "yes"]
    no = [t for t in tasks if t.type in YES_NO_TYPES and t.answer == "no"]
    if not yes or not no:
        return tasks
    if len(yes) / (len(yes) + len(no)) > yes_ratio:
        yes = rng.sample(yes, min(len(yes), round(len(no) * yes_ratio / (1 - yes_ratio))))
    else:
        no = rng.sample(no, min(len(no), round(len(yes) * (1 - yes_ratio) / yes_ratio)))
    keep = {t.task_id for t in yes + no}
    return [t for t in tasks if t.type not in YES_NO_TYPES or t.task_id in keep]
