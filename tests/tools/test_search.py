"""The QA world and its search tool, in-process and as an HTTP server under load."""

import json
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


def _post_chunked(url: str, chunks, path: str = "/retrieve"):
    """POST with Transfer-Encoding: chunked (no Content-Length), one chunk at a time;
    stops sending as soon as the server answers (or hangs up) and returns (status, body)."""
    import http.client
    import select
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    try:
        for chunk in chunks:
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if select.select([conn.sock], [], [], 0)[0]:
                break  # the server has answered before reading everything
        else:
            conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = conn.getresponse()
    body = reply.read()
    conn.close()
    return reply.status, body


def test_chunked_body_over_the_limit_is_refused_whatever_the_headers_say(server):
    # 20 MB of valid JSON (padded with whitespace) and no Content-Length: the cap
    # must hold on the bytes actually read, not on what the headers announce.
    chunks = [b'{"queries": ["alpha"], "topk": 1', *(b" " * 65_536 for _ in range(320)), b"}"]
    status, body = _post_chunked(server, chunks)
    assert status == 413
    assert "over" in httpx.Response(413, content=body).json()["detail"]
    assert httpx.get(server + "/health", timeout=10).status_code == 200


def test_small_chunked_body_is_served(server, world):
    name = world["documents"][0]["title"]
    payload = json.dumps({"queries": [name], "topk": 1}).encode()
    status, body = _post_chunked(server, [payload[:10], payload[10:]])
    assert status == 200, body
    assert json.loads(body)["result"][0][0]["title"] == name


@pytest.mark.parametrize(
    "payload",
    [
        {"queries": ["a"], "topk": "3"},
        {"queries": ["a"], "topk": True},
        {"queries": ["a"], "topk": 3.0},
        {"queries": ["a"], "topk": None},
        {"queries": [1]},
        {"queries": ["a", None]},
        {"queries": [["a"]]},
    ],
)
def test_types_are_validated_strictly(server, payload):
    reply = httpx.post(server + "/retrieve", json=payload, timeout=10)
    assert reply.status_code == 422, reply.text
    assert isinstance(reply.json()["detail"], str)


def test_error_replies_are_one_short_line_without_the_request(server):
    marker = "echo-me-" + "z" * 500
    for payload in ({"queries": [marker], "topk": "3"}, {"queries": marker}, {"queries": [marker], "topk": 10_000}):
        reply = httpx.post(server + "/retrieve", json=payload, timeout=10)
        assert reply.status_code == 422
        assert "echo-me" not in reply.text
        detail = reply.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and len(reply.content) < 300, reply.text
