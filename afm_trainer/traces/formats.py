"""Trajectory formats -> one shape: a prompt and the turns that follow it.

Every parser takes one input record (a dict) and returns a ``Trajectory`` or raises
``TraceError`` with a short reason naming the offending field. The reasons end up in
the rejects file next to the record, so they say what is wrong, not where in the code.

Formats of this module:
- ``search_agent`` (seed 002): {"question", "trace": [{"type": "reasoning", "content"},
  {"type": "search", "query"}, {"type": "search_result", "documents": [{"title",
  "content"}]}, ..., {"type": "CorrectAnswer", "content"}]}, optional id/answer/score.
- ``agent_chain`` (seed 001): {"task", "trajectory": [{"agent": "Planner", "output"},
  ...]}; each agent's turn starts with its role token (``<|planner|>``).
- ``teacher_cot`` (seed 004): {"question", "answer", "student_draft"?,
  "teacher_output"?}; track A (question -> answer) or, with teacher reasoning, track B
  (question + student draft -> teacher reasoning -> answer); a wrong draft also gives a
  preference pair (``preference_pair``) for DPO.
The chat formats (OpenAI ``messages``, ShareGPT) are in ``afm_trainer.traces.chat``; the
registry of every format, and how each is detected, in ``afm_trainer.traces.registry``.

Text rules, the same in every format: no text may hold a reserved chat token
(``<|im_end|>``, ``<|planner|>``: anything shaped ``<|name|>``); a field the converter
writes inside a trace tag (reasoning in ``<think>``, a query in ``<search>``...) holds no
trace tag; the tags of every other model turn are well formed. A record that breaks one
is rejected with the field named, never rewritten.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

from afm_trainer.models.special_tokens import ROLE_TOKENS, reserved_token_in, tag_structure_problem, trace_tag_in


class TraceError(ValueError):
    """A record that cannot be converted; the message is the reason."""


@dataclass
class Trajectory:
    id: str | None
    prompt: list[dict]  # messages before the first model turn (system, user)
    turns: list[dict]  # {"role": "assistant"|"tool"|"user", "content": str}
    answer: str | None = None  # the final answer, for label balance and splits
    score: float | None = None
    meta: dict = field(default_factory=dict)
    tools: list[dict] | None = None  # function schemas the chat template renders (chat formats)


def type_name(value) -> str:
    names = {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__) if value is not None else "null"


def plain_text(text: str, name: str, tag: str | None = None) -> str:
    """``text`` if it holds no reserved token (and, for a field written inside ``<tag>``,
    no trace tag), else the TraceError naming the field."""
    if "<" not in text:  # both patterns start with "<"; most fields have none
        return text
    if token := reserved_token_in(text):
        raise TraceError(f"{name} contains {token!r}, a reserved chat token (text is never trained as one)")
    if tag and (inner := trace_tag_in(text)):
        raise TraceError(f"{name} contains the tag {inner!r} but is written inside <{tag}>...</{tag}>")
    return text


def well_formed_turn(text: str, name: str) -> str:
    """``text`` as a model turn of the data's own making: no reserved token, tags well formed."""
    if problem := tag_structure_problem(plain_text(text, name)):
        raise TraceError(f"{name} has broken tags: {problem}")
    return text


def _text(record: dict, key: str, where: str = "", tag: str | None = None) -> str:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise TraceError(f"{where}{key!r} must be a string, got {type_name(value)}")
    if not isinstance(value, str) or not value.strip():
        raise TraceError(f"missing or empty {where}{key!r}")
    return plain_text(value, f"{where}{key!r}", tag)


def finite_number(record: dict, key: str) -> float | None:
    """``record[key]`` as a float (None when absent), or the TraceError: not a number, or
    not a finite one (NaN, Infinity, or an integer past a float's range, such as JSON's
    10**400), which would pass or fail every threshold and sort anywhere."""
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TraceError(f"{key!r} must be a number, got {value!r}")
    if not -sys.float_info.max <= value <= sys.float_info.max:  # NaN fails every comparison
        shown = f"an integer of {len(str(value))} digits" if isinstance(value, int) else repr(value)
        raise TraceError(f"{key!r} must be a finite number, got {shown}")
    return float(value)


def _score(record: dict) -> float | None:
    return finite_number(record, "score")


def difficulty_of(record: dict) -> float | None:
    """A record's optional ``difficulty`` (any number; larger is harder), a curriculum key."""
    return finite_number(record, "difficulty")


def _id(record: dict) -> str | None:
    return None if record.get("id") is None else str(record["id"])


# A tool call in the policy's own tags: <search>query</search> or <code>python</code>
# (parsed by the RL tool parser, checked by the rewards' format rule).
TOOL_OPEN = re.compile(r"<(search|code)>")


def tool_calls(text: str) -> list[tuple[str, str]]:
    """(tag, body) of each ``<search>...</search>`` and ``<code>...</code>`` in ``text``,
    in order. Linear in the text's length (a lazy regex over many unclosed openings is
    quadratic): once a tag has no closing after some opening, later ones have none either."""
    calls, position, unclosed = [], 0, set()
    while match := TOOL_OPEN.search(text, position):
        tag, position = match.group(1), match.end()
        if tag in unclosed:
            continue
        end = text.find(f"</{tag}>", position)
        if end < 0:
            unclosed.add(tag)
            continue
        calls.append((tag, text[position:end]))
        position = end + len(tag) + 3
    return calls


def information_text(documents: list[dict]) -> str:
    """Search results as the tool turn every part of the project shows the model
    (training traces, evaluation, the RL tool): one format, so nothing drifts."""
    return (
        "<information>"
        + "\n".join(f"[{i}] {d['title']}: {d['content']}" for i, d in enumerate(documents, 1))
        + "</information>"
    )


def parse_search_agent(record: dict) -> Trajectory:
    question = _text(record, "question")
    trace = record.get("trace")
    if trace is not None and not isinstance(trace, list):
        raise TraceError(f"'trace' must be a list of steps, got {type_name(trace)}")
    if not trace:
        raise TraceError("missing or empty 'trace'")
    turns, pending, answer = [], [], None
    for i, step in enumerate(trace):
        kind = step.get("type") if isinstance(step, dict) else None
        if answer is not None:
            raise TraceError(f"trace[{i}] comes after the final answer")
        if kind == "reasoning":
            pending.append(f"<think>{_text(step, 'content', f'trace[{i}].', tag='think')}</think>")
        elif kind == "search":
            pending.append(f"<search>{_text(step, 'query', f'trace[{i}].', tag='search')}</search>")
            turns.append({"role": "assistant", "content": "\n".join(pending)})
            pending = []
        elif kind == "search_result":
            if not turns or turns[-1]["role"] != "assistant" or "<search>" not in turns[-1]["content"]:
                raise TraceError(f"trace[{i}] search_result without a search before it")
            documents = step.get("documents")
            if not isinstance(documents, list):
                raise TraceError(
                    f"trace[{i}].documents must be a list of {{title, content}}, got {type_name(documents)}"
                )
            for j, d in enumerate(documents):
                if not isinstance(d, dict):
                    raise TraceError(
                        f"trace[{i}].documents[{j}] must be a {{title, content}} object, got {type_name(d)}"
                    )
                for key in ("title", "content"):
                    if not isinstance(d.get(key), str):
                        got = type_name(d[key]) if key in d else "missing"
                        raise TraceError(f"trace[{i}].documents[{j}].{key} must be a string, got {got}")
                    plain_text(d[key], f"trace[{i}].documents[{j}].{key}", tag="information")
            turns.append({"role": "tool", "content": information_text(documents)})
        elif kind == "CorrectAnswer":
            answer = _text(step, "content", f"trace[{i}].", tag="answer")
            pending.append(f"<answer>{answer}</answer>")
            turns.append({"role": "assistant", "content": "\n".join(pending)})
            pending = []
        else:
            raise TraceError(f"trace[{i}] has unknown type {kind!r}")
    if answer is None:
        raise TraceError("trace has no CorrectAnswer step")
    if isinstance(record.get("answer"), str) and record["answer"].strip():
        answer = plain_text(record["answer"].strip(), "'answer'")
    prompt = [{"role": "user", "content": question}]
    return Trajectory(_id(record), prompt, turns, answer=answer, score=_score(record))


def role_token(agent: str) -> str:
    return f"<|{agent.strip().lower().replace(' ', '_')}|>"


KNOWN_AGENTS = ", ".join(token[2:-2].capitalize() for token in ROLE_TOKENS)


def agent_role(agent, agent_roles: dict[str, str] | None = None) -> str | None:
    """The role token of an agent's name: its own (``Planner`` -> ``<|planner|>``), or the
    one ``agent_roles`` maps it to (``{"Code Reviewer": "reviewer"}``), or None."""
    if not isinstance(agent, str):
        return None
    for name, role in (agent_roles or {}).items():
        if agent.strip().lower() == name.strip().lower():
            return role_token(role)
    return role_token(agent) if role_token(agent) in ROLE_TOKENS else None


def parse_agent_chain(record: dict, agent_roles: dict[str, str] | None = None) -> Trajectory:
    """``agent_roles``: other agent names mapped onto the role tokens the tokenizer has."""
    task = _text(record, "task")
    steps = record.get("trajectory")
    if steps is not None and not isinstance(steps, list):
        raise TraceError(f"'trajectory' must be a list of steps, got {type_name(steps)}")
    if not steps:
        raise TraceError("missing or empty 'trajectory'")
    turns = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            raise TraceError(f"trajectory[{i}] is not an object")
        agent = step.get("agent")
        if (token := agent_role(agent, agent_roles)) is None:
            raise TraceError(
                f"trajectory[{i}].agent {agent!r} is not a known agent role (known: {KNOWN_AGENTS}; "
                "map other names onto them with --agent_roles)"
            )
        output = well_formed_turn(_text(step, "output", f"trajectory[{i}]."), f"trajectory[{i}].'output'")
        turns.append({"role": "assistant", "content": f"{token}{output}"})
    answer = plain_text(record["answer"], "'answer'") if isinstance(record.get("answer"), str) else None
    return Trajectory(_id(record), [{"role": "user", "content": task}], turns, answer=answer, score=_score(record))


def teacher_prompt(question: str, student_draft: str | None) -> str:
    """The track-B prompt; evaluation builds prompts with this same function."""
    if student_draft is None:
        return question
    return f"{question}\n\nStudent draft:\n{student_draft}"


def parse_teacher_cot(record: dict) -> Trajectory:
    question = _text(record, "question")
    answer = _text(record, "answer", tag="answer").strip()
    draft = record.get("student_draft")
    reasoning = record.get("teacher_output")
    for key, value in (("student_draft", draft), ("teacher_output", reasoning)):
        if value is not None and not isinstance(value, str):
            raise TraceError(f"{key!r} must be text, got {type(value).__name__}")
    if draft:  # the student's own turn: the rejected response of a preference pair
        well_formed_turn(draft, "'student_draft'")
    if reasoning:
        plain_text(reasoning, "'teacher_output'", tag="think")
    if reasoning:
        target = f"<think>{reasoning}</think><answer>{answer}</answer>"
        prompt = teacher_prompt(question, draft or None)
    else:
        target, prompt = f"<answer>{answer}</answer>", question
    track = "B" if reasoning else "A"
    return Trajectory(
        _id(record),
        [{"role": "user", "content": prompt}],
        [{"role": "assistant", "content": target}],
        answer=answer,
        score=_score(record),
        meta={"track": track, "student_draft": draft or None},
    )


# Where a sentence after the answer starts: "Answer: Georges Bizet - he wrote it".
ANSWER_ENDS = (" - ", " – ", " — ")


def _tagged_answer(draft: str) -> tuple[int, str] | None:
    start = draft.find("<answer>")
    end = draft.find("</answer>", start + 8) if start >= 0 else -1
    return None if end < 0 else (start, draft[start + 8 : end])


def _boxed_answer(draft: str) -> tuple[int, str] | None:
    """``\\boxed{...}`` with its braces balanced (``\\boxed{\\frac{1}{2}}``)."""
    start = draft.find("\\boxed{")
    if start < 0:
        return None
    depth = 0
    for i in range(start + 6, len(draft)):
        depth += {"{": 1, "}": -1}.get(draft[i], 0)
        if depth == 0:
            return start, draft[start + 7 : i]
    return None


def _answer_line(draft: str) -> tuple[int, str] | None:
    """A line "Answer: X" (any case, markdown bold allowed), X up to a dash that starts a comment."""
    position = 0
    for line in draft.splitlines(keepends=True):
        text = line.lstrip().lstrip("*")
        if text[:6].lower() == "answer":
            rest = text[6:].lstrip("* \t")
            if rest.startswith(":"):
                answer = rest[1:].strip().strip("*").strip()
                for end in ANSWER_ENDS:
                    answer = answer.split(end, 1)[0]
                answer = answer.rstrip(".").strip("*").strip()
                if answer:
                    return position, answer
        position += len(line)
    return None


def student_answer(draft: str) -> str | None:
    """The answer a student draft commits to, the first in the text of: ``<answer>X</answer>``,
    ``\\boxed{X}``, or a line ``Answer: X`` (X may be several words or a negative number;
    a comment after " - " is not part of it). Linear in the draft's length."""
    found = [hit for hit in (_tagged_answer(draft), _boxed_answer(draft), _answer_line(draft)) if hit]
    return min(found)[1].strip() if found else None


def preference_pair(trajectory: Trajectory) -> dict | None:
    """(prompt, chosen, rejected) for DPO from a teacher_cot record whose student draft
    is wrong: chosen is the teacher's turn, rejected the draft. None when there is no
    draft, the draft commits to no answer, or it is right."""
    draft = trajectory.meta.get("student_draft")
    committed = student_answer(draft) if draft else None
    if committed is None or committed.lower() == (trajectory.answer or "").lower():
        return None
    return {
        "prompt": trajectory.prompt,
        "chosen": trajectory.turns,
        "rejected": [{"role": "assistant", "content": draft}],
    }


MODES = ("multiturn", "stepwise", "one_call")


def to_samples(trajectory: Trajectory, mode: str, role: str | None = None) -> list[list[dict]]:
    """Conversations with a per-message ``train`` flag (True only on trained turns).

    multiturn: the whole trajectory, every assistant turn trained.
    stepwise: one conversation per assistant turn (a decision point), ending at it;
    only that turn is trained, earlier ones are context, so no turn is trained twice.
    one_call: the model turns joined into one assistant message (role tokens mark where
    each agent speaks): what a model that plays a whole agent chain in one call trains
    on; a trajectory with tool or user turns between them has no such form (TraceError).
    Tool and user turns (observations) are never trained.
    ``role`` (a role token such as ``<|coder|>``): only the turns that agent spoke are
    trained, the others are context, and nothing after its last turn is kept (the
    data of one agent of a multi-agent system).
    """
    prompt = [{**m, "train": False} for m in trajectory.prompt]
    turns = trajectory.turns
    if role is not None:
        if role not in ROLE_TOKENS:
            raise ValueError(f"unknown role {role!r} (known: {', '.join(ROLE_TOKENS)})")
        spoken = [j for j, t in enumerate(turns) if t["role"] == "assistant" and t["content"].startswith(role)]
        if not spoken:
            return []
        turns = turns[: spoken[-1] + 1]
    trained = lambda t: t["role"] == "assistant" and (role is None or t["content"].startswith(role))  # noqa: E731
    if mode == "multiturn":
        return [prompt + [{**t, "train": trained(t)} for t in turns]]
    if mode == "stepwise":
        samples = []
        for j, turn in enumerate(turns):
            if trained(turn):
                context = [{**t, "train": False} for t in turns[:j]]
                samples.append(prompt + context + [{**turn, "train": True}])
        return samples
    if mode == "one_call":
        if role is not None:
            raise ValueError("one_call trains every agent's turns: it takes no role")
        if any(t["role"] != "assistant" or t.get("tool_calls") for t in turns):
            raise TraceError("has tool or user turns between the model's turns: no one-call form (use multiturn)")
        return [prompt + [{"role": "assistant", "content": "\n".join(t["content"] for t in turns), "train": True}]]
    raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
