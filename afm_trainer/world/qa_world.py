"""A generated world of fictional people, cities, countries and companies, and
multi-hop questions about it (1 to 3 hops), so no pretrained model knows the answers
and a search tool is the only way to them.

Relations: a person was born in a city and founded a company; a company is
headquartered in a city; a city lies in a country; a country has a capital city.
Each entity gets one document (title = its name) stating its relations.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass

SYLLABLES = "ka lo mi ra ven tor el an is ur bel dan sor wyn ga thi mar ost kel fen".split()


@dataclass
class Question:
    qid: str
    question: str
    answer: str
    hops: int
    path: list[list[str]]  # [[entity, relation, value], ...]: the facts, in order, that answer it


def _name(rng: random.Random, used: set[str], parts: int) -> str:
    while True:
        name = "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()
        if name not in used:
            used.add(name)
            return name


def build_world(seed: int = 0, n_countries: int = 8, cities_per_country: int = 4, n_people: int = 300) -> dict:
    """{"documents": [{"title", "content"}], "facts": {entity: {relation: value}}}."""
    rng = random.Random(seed)
    used: set[str] = set()
    facts: dict[str, dict[str, str]] = {}
    countries = [_name(rng, used, 2) for _ in range(n_countries)]
    cities = []
    for country in countries:
        mine = [_name(rng, used, 2) for _ in range(cities_per_country)]
        cities += mine
        facts[country] = {"kind": "country", "capital": mine[0]}
        for city in mine:
            facts[city] = {"kind": "city", "country": country}
    companies = []
    for _ in range(n_people):
        person = _name(rng, used, 3)
        company = _name(rng, used, 2) + " Works"
        companies.append(company)
        facts[person] = {"kind": "person", "born_in": rng.choice(cities), "founded": company}
        facts[company] = {"kind": "company", "headquarters": rng.choice(cities), "founder": person}
    documents = []
    for entity, f in facts.items():
        if f["kind"] == "country":
            text = f"{entity} is a country. Its capital is {f['capital']}."
        elif f["kind"] == "city":
            text = f"{entity} is a city in {f['country']}."
        elif f["kind"] == "person":
            text = f"{entity} was born in {f['born_in']}. {entity} founded {f['founded']}."
        else:
            text = f"{entity} is a company founded by {f['founder']}. Its headquarters are in {f['headquarters']}."
        documents.append({"title": entity, "content": text})
    return {"documents": documents, "facts": facts}


def make_questions(world: dict, seed: int, n: int, hops=(1, 2, 3), exclude: set[str] = frozenset()) -> list[Question]:
    """``n`` distinct questions, cycling through hop counts; none in ``exclude``."""
    facts = world["facts"]
    people = sorted(e for e, f in facts.items() if f["kind"] == "person")
    rng = random.Random(f"questions:{seed}")
    out, seen = [], set(exclude)
    for _attempt in range(n * 50):
        if len(out) == n:
            break
        k = hops[len(out) % len(hops)]
        person = rng.choice(people)
        city = facts[person]["born_in"]
        country = facts[city]["country"]
        template = rng.random() < 0.5
        if k == 1:
            if template:
                q, a, path = f"Where was {person} born?", city, [[person, "born_in", city]]
            else:
                company = facts[person]["founded"]
                q, a, path = f"Which company did {person} found?", company, [[person, "founded", company]]
        elif k == 2:
            if template:
                q, a = f"In which country was {person} born?", country
                path = [[person, "born_in", city], [city, "country", country]]
            else:
                company = facts[person]["founded"]
                hq = facts[company]["headquarters"]
                q, a = f"Where are the headquarters of the company {person} founded?", hq
                path = [[person, "founded", company], [company, "headquarters", hq]]
        else:
            capital = facts[country]["capital"]
            q, a = f"What is the capital of the country where {person} was born?", capital
            path = [[person, "born_in", city], [city, "country", country], [country, "capital", capital]]
        if q in seen:
            continue
        seen.add(q)
        out.append(Question(f"q{seed}-{len(out)}", q, a, k, path))
    return out


def save_world(world: dict, path: str) -> None:
    """The corpus as JSONL ({"title", "content"} a line), as retrieval servers load it."""
    with open(path, "w", encoding="utf-8") as f:
        for doc in world["documents"]:
            f.write(json.dumps(doc) + "\n")


def questions_to_jsonl(questions: list[Question], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for q in questions:
            f.write(json.dumps(asdict(q)) + "\n")
