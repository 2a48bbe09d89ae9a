"""The QA world and its search tool, in-process and as an HTTP server under load."""

import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from afm_trainer.tools.search import SearchIndex
from afm_trainer.world.qa_world import build_world, make_questions, save_world


@pytest.fixture(scope="module")
def world():
    return build_world(seed=0)


def test_world_is_deterministic_and_questions_are_answerable_by_search(world):
    assert build_world(seed=0) == world
    index = SearchIndex(world["documents"])
    questions = make_questions(world, seed=1, n=30)
    assert {q.hops for q in questions} == {1, 2, 3}
    for q in questions:
        for entity, _relation, value in q.path:
            top = index.search([entity], 3)[0][0]
            assert top["title"] == entity and value in top["content"]
        assert q.path[-1][2] == q.answer


def test_held_out_questions_are_disjoint(world):
    held_out = make_questions(world, seed=999, n=50)
    train = make_questions(world, seed=42, n=200, exclude={q.question for q in held_out})
    assert not {q.question for q in held_out} & {q.question for q in train}


@pytest.fixture(scope="module")
def server(world, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    save_world(world, str(corpus))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "afm_trainer.tools.search_server", "--corpus", str(corpus), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail("search server did not start: " + process.stdout.read().decode()[-2000:])
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_server_answers_2000_requests_from_concurrent_clients_correctly(server, world):
    names = [d["title"] for d in world["documents"]]

    def client(k):
        wrong = 0
        with httpx.Client(base_url=server, timeout=30) as http:
            for i in range(250):
                name = names[(k * 250 + i) % len(names)]
                reply = http.post("/retrieve", json={"queries": [name], "topk": 2})
                top = reply.json()["result"][0][0]
                wrong += reply.status_code != 200 or top["title"] != name
        return wrong

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sum(pool.map(client, range(8))) == 0
    assert httpx.get(server + "/health").json() == {"status": "ok", "documents": len(world["documents"])}


@pytest.mark.parametrize(
    "send, status",
    [
        (lambda c: c.post("/retrieve", content=b"{not json", headers={"content-type": "application/json"}), 422),
        (lambda c: c.post("/retrieve", json={"topk": 3}), 422),
        (lambda c: c.post("/retrieve", json={"queries": []}), 422),
        (lambda c: c.post("/retrieve", json={"queries": ["a"], "topk": 10_000}), 422),
        (lambda c: c.post("/retrieve", json={"queries": ["a"] * 65}), 422),
        (lambda c: c.post("/retrieve", json={"queries": ["x" * 5000]}), 422),
        (lambda c: c.post("/retrieve", json={"queries": ["   "]}), 422),
        (lambda c: c.post("/retrieve", json={"queries": "just a string"}), 422),
        (lambda c: c.post("/retrieve", content=b"x" * 100_000, headers={"content-type": "application/json"}), 413),
        (lambda c: c.get("/retrieve"), 405),
    ],
)
def test_malformed_requests_get_4xx_with_a_message(server, send, status):
    with httpx.Client(base_url=server, timeout=10) as http:
        reply = send(http)
        assert reply.status_code == status
        assert reply.json()["detail"]
        assert http.get("/health").status_code == 200  # still serving
