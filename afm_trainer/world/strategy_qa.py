"""StrategyQA-like yes/no questions about the demo world, for seed 004's self-improvement
pipeline (``make demo-self-improve``).

Each question needs 2 or 3 reasoning steps over the world's facts ("Were X and Y born in
the same country?"), and carries those facts, shuffled with a few unrelated ones, in a
"Facts:" list, so a model can answer without search. Because the world knows exactly
which facts a question needs, everything seed 004 asks of a teacher and a judge is
exact and offline:

- ``make_strategy_questions``: the questions, with a chosen share of "yes";
- ``teacher_reasoning``: the teacher's step-by-step reasoning over the needed facts;
- ``student_draft``: a draft in seed 004's format (``Answer: Yes - <brief reasoning>``
  then ``Questions: <clarifying question>?``), right or wrong, with a clarifying
  question that asks for a needed fact or for something irrelevant;
- ``judge_clarifier``: scores a clarifying question against the needed facts;
- ``strategy_record``: one ``teacher_cot`` trace record (afm_trainer.traces.formats).

How the records map to seed 004's phases, through the existing teacher_cot converter:
Phase A (direct answer SFT) is track A, question -> answer; Phase B (CoT distillation)
is track B, question + student draft -> teacher reasoning -> answer; Phase C (DPO) is
the preference pair a wrong draft gives: prompt = question + student draft, chosen =
the teacher's turn, rejected = the draft. ``clarifier_score`` in the record is the
judge's score, for rewarding useful self-questioning.

Answers are lower-case "yes"/"no" like the rest of the world; drafts write "Yes"/"No"
as seed 004 does (the converter compares them case-blind).
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass

from afm_trainer.world.teacher import FOUND

# A clarifying question asking for one fact, by relation.
CLARIFY = {
    "born_in": "Where was {e} born?",
    "founded": "Which company did {e} found?",
    "country": "Which country is {e} in?",
    "headquarters": "Where are the headquarters of {e}?",
    "capital": "What is the capital of {e}?",
}
# The wording that shows a question is about a relation (the judge's rule).
RELATION_WORDS = {
    "born_in": re.compile(r"\b(born|birth\w*)\b", re.IGNORECASE),
    "founded": re.compile(r"\b(found|founded|founder|founding)\b", re.IGNORECASE),
    "country": re.compile(r"\b(country|countries)\b", re.IGNORECASE),
    "headquarters": re.compile(r"\b(headquarter\w*|hq)\b", re.IGNORECASE),
    "capital": re.compile(r"\bcapitals?\b", re.IGNORECASE),
}
N_DISTRACTORS = 3


@dataclass
class StrategyQuestion:
    qid: str
    question: str  # the question, then its "Facts:" list
    answer: str  # "yes" or "no"
    hops: int  # the longest chain of facts the answer follows
    needed: list[list[str]]  # [[entity, relation, value], ...]: the facts the answer needs, in reasoning order
    entities: list[str]  # every entity the answer depends on
    ask: str  # the question alone, without the facts
    template: str
    distractors: list[list[str]]  # the unrelated facts in the Facts list


def _sentence(fact) -> str:
    entity, relation, value = fact
    return FOUND[relation].format(e=entity, v=value)


class _Templates:
    """The question templates over one world; each builds a question with the wanted answer, or None."""

    def __init__(self, world: dict):
        self.facts = facts = world["facts"]
        self.people = sorted(e for e, f in facts.items() if f["kind"] == "person")
        self.countries = sorted(e for e, f in facts.items() if f["kind"] == "country")
        self.capitals = {facts[c]["capital"] for c in self.countries}

    def country_of(self, person: str) -> str:
        return self.facts[self.facts[person]["born_in"]]["country"]

    def hq_country(self, person: str) -> str:
        return self.facts[self.facts[self.facts[person]["founded"]]["headquarters"]]["country"]

    def birth(self, person: str) -> list[list[str]]:
        city = self.facts[person]["born_in"]
        return [[person, "born_in", city], [city, "country", self.facts[city]["country"]]]

    def born_in_country(self, rng, want: bool):
        p = rng.choice(self.people)
        true = self.country_of(p)
        named = true if want else rng.choice([c for c in self.countries if c != true])
        return f"Was {p} born in the country {named}?", self.birth(p), {named}, 2

    def same_country(self, rng, want: bool):
        p = rng.choice(self.people)
        others = [q for q in self.people if q != p and (self.country_of(q) == self.country_of(p)) == want]
        if not others:
            return None
        p, q = sorted([p, rng.choice(others)])  # one wording per pair
        return f"Were {p} and {q} born in the same country?", self.birth(p) + self.birth(q), set(), 2

    def born_in_capital(self, rng, want: bool):
        people = [p for p in self.people if (self.facts[p]["born_in"] in self.capitals) == want]
        if not people:
            return None
        p = rng.choice(people)
        needed = self.birth(p)
        country = needed[-1][2]
        needed.append([country, "capital", self.facts[country]["capital"]])
        return f"Was {p} born in the capital of a country?", needed, set(), 3

    def company_home(self, rng, want: bool):
        people = [p for p in self.people if (self.hq_country(p) == self.country_of(p)) == want]
        if not people:
            return None
        p = rng.choice(people)
        company = self.facts[p]["founded"]
        hq = self.facts[company]["headquarters"]
        needed = [[p, "founded", company], [company, "headquarters", hq], [hq, "country", self.facts[hq]["country"]]]
        ask = f"Is the company {p} founded headquartered in the country where {p} was born?"
        return ask, needed + self.birth(p), set(), 3

    NAMES = ("born_in_country", "same_country", "born_in_capital", "company_home")

    def all_facts(self) -> list[list[str]]:
        return [[e, r, v] for e, f in sorted(self.facts.items()) for r, v in sorted(f.items()) if r in FOUND]


def make_strategy_questions(
    world: dict, seed: int, n: int, yes_ratio: float = 0.5, exclude=frozenset()
) -> list[StrategyQuestion]:
    """``n`` distinct yes/no questions, round(n * yes_ratio) of them "yes", deterministic
    given ``seed``. ``exclude`` holds question texts (the bare ``ask`` or the full
    question) that must not come out, e.g. a held-out split's."""
    templates = _Templates(world)
    every_fact = templates.all_facts()
    rng = random.Random(f"strategy:{seed}")
    n_yes = round(n * yes_ratio)
    wanted = [True] * n_yes + [False] * (n - n_yes)
    rng.shuffle(wanted)
    out, seen = [], set(exclude)
    for want in wanted:
        for _attempt in range(200):
            name = rng.choice(_Templates.NAMES)
            built = getattr(templates, name)(rng, want)
            if built is None or built[0] in seen:
                continue
            ask, needed, extra, hops = built
            needed = [fact for i, fact in enumerate(needed) if fact not in needed[:i]]  # a shared city counts once
            entities = sorted({x for e, _, v in needed for x in (e, v)} | extra)
            distractors = []
            while len(distractors) < N_DISTRACTORS:
                fact = rng.choice(every_fact)
                if fact[0] not in entities and fact[2] not in entities and fact not in distractors:
                    distractors.append(fact)
            lines = [_sentence(f) for f in needed + distractors]
            rng.shuffle(lines)
            question = ask + "\nFacts:\n" + "\n".join(f"- {line}" for line in lines)
            if question in seen:
                continue
            seen.add(ask)
            answer = "yes" if want else "no"
            out.append(
                StrategyQuestion(
                    f"s{seed}-{len(out)}", question, answer, hops, needed, entities, ask, name, distractors
                )
            )
            break
        else:
            raise ValueError(f"the world is too small for {n} distinct strategy questions (made {len(out)})")
    return out


def _conclusion(q: StrategyQuestion) -> str:
    """The comparison the answer rests on, written as the two things compared and then
    the verdict ("Sorwyn and Marven: different countries."): a model that writes the two
    names first decides from the two tokens just before, not from the whole chain at once."""
    f = {(e, r): v for e, r, v in q.needed}
    person = q.needed[0][0]
    country = lambda p: f[(f[(p, "born_in")], "country")]  # noqa: E731
    if q.template == "born_in_country":
        named = q.ask.removeprefix(f"Was {person} born in the country ").removesuffix("?")
        pair, kind = (country(person), named), ("country", "countries")
    elif q.template == "same_country":
        other = next(e for e, r, _ in q.needed if r == "born_in" and e != person)
        pair, kind = (country(person), country(other)), ("country", "countries")
    elif q.template == "born_in_capital":
        pair, kind = (f[(person, "born_in")], f[(country(person), "capital")]), ("city", "cities")
    else:
        company = f[(person, "founded")]
        pair, kind = (f[(f[(company, "headquarters")], "country")], country(person)), ("country", "countries")
    verdict = f"the same {kind[0]}" if pair[0] == pair[1] else f"different {kind[1]}"
    return f"{pair[0]} and {pair[1]}: {verdict}."


def teacher_reasoning(q: StrategyQuestion) -> str:
    """The scripted teacher's reasoning: each needed fact in order, the conclusion, the answer."""
    return " ".join([_sentence(f) for f in q.needed] + [_conclusion(q), f"So the answer is {q.answer}."])


def student_draft(
    q: StrategyQuestion, rng: random.Random, error_rate: float = 0.3, clarifier_useful: float = 0.7
) -> dict:
    """{"text", "draft_answer", "clarifier"}: a draft in seed 004's format. With probability
    ``error_rate`` the answer is wrong and its brief reasoning cites a false fact or an
    irrelevant one; with probability ``clarifier_useful`` the clarifying question asks for
    a needed fact, otherwise for a fact about an entity the question does not depend on."""
    wrong = rng.random() < error_rate
    answer = q.answer if not wrong else ("no" if q.answer == "yes" else "yes")
    if not wrong:
        cited = _sentence(rng.choice(q.needed))
    else:
        false = [[e, r, v2] for e, r, v in q.needed for _, r2, v2 in q.needed + q.distractors if r2 == r and v2 != v]
        cited = _sentence(rng.choice(false) if false and rng.random() < 0.5 else rng.choice(q.distractors))
    if rng.random() < clarifier_useful:
        entity, relation, _ = rng.choice(q.needed)
    else:
        entity, relation, _ = rng.choice(q.distractors)
    clarifier = CLARIFY[relation].format(e=entity)
    text = f"Answer: {answer.capitalize()} - {cited.rstrip('.')}\nQuestions: {clarifier}"
    return {"text": text, "draft_answer": answer.capitalize(), "clarifier": clarifier}


def _mentions(text: str, entity: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(entity)}(?!\w)", text, re.IGNORECASE) is not None


def judge_clarifier(q: StrategyQuestion, clarifier: str) -> float:
    """How well a clarifying question targets what ``q`` needs, exactly:

    - 1.0 when it asks for a needed fact: it names the entity of a needed fact (whole
      word, any case) and uses that fact's relation wording (born/birth, found/founded/
      founder, country, headquarters, capital);
    - 0.5 when it names an entity the question depends on but asks for none of its
      needed relations;
    - 0.0 otherwise.
    """
    if any(_mentions(clarifier, e) and RELATION_WORDS[r].search(clarifier) for e, r, _ in q.needed):
        return 1.0
    return 0.5 if any(_mentions(clarifier, e) for e in q.entities) else 0.0


def strategy_record(
    q: StrategyQuestion,
    rng: random.Random,
    error_rate: float = 0.3,
    clarifier_useful: float = 0.7,
    teacher_error: dict[str, float] | None = None,
) -> dict:
    """One ``teacher_cot`` trace record (as ``teacher_cot_record`` makes), plus hops, the
    draft's answer and clarifying question, and the judge's score for it.

    ``teacher_error`` maps a true answer to the chance that the teacher gets it wrong (its
    reasoning then ends in the other answer, and the record's ``score`` is 0 where a right
    teacher's is 1): seed 004's teacher disagreed with the ground truth on 31.5% of its
    questions, more often on "yes" ones, so filtering its errors out skewed the labels."""
    draft = student_draft(q, rng, error_rate, clarifier_useful)
    teacher_wrong = rng.random() < (teacher_error or {}).get(q.answer, 0.0)
    if teacher_wrong:
        other = "no" if q.answer == "yes" else "yes"
        reasoning = " ".join([_sentence(f) for f in q.needed] + [f"So the answer is {other}."])
    else:
        reasoning = teacher_reasoning(q)
    return {
        "id": q.qid,
        "question": q.question,
        "answer": q.answer,
        "student_draft": draft["text"],
        "teacher_output": reasoning,
        "score": 0.0 if teacher_wrong else 1.0,
        "type": q.template,
        "hops": q.hops,
        "draft_answer": draft["draft_answer"],
        "clarifier": draft["clarifier"],
        "clarifier_score": judge_clarifier(q, draft["clarifier"]),
    }


def write_strategy_traces(
    path: str,
    questions: list[StrategyQuestion],
    seed: int,
    error_rate: float = 0.3,
    clarifier_useful: float = 0.7,
    teacher_error: dict[str, float] | None = None,
) -> list[dict]:
    """The questions' records as a teacher_cot JSONL file (written atomically); returns them."""
    rng = random.Random(f"drafts:{seed}")
    records = [strategy_record(q, rng, error_rate, clarifier_useful, teacher_error) for q in questions]
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(path + ".tmp", path)
    return records
