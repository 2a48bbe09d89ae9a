"""add_summaries.py against a real local HTTP server that misbehaves, and its cache."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from afm_trainer.data.convert import CONTEXT_MESSAGES, convert
from afm_trainer.data.summaries import extractive_summary
from tests.conftest import REPO
from tests.data.test_convert_traces import SEARCH, write_jsonl

FAULTS = ["429", "500", "slow", "not json", "no choices", "empty"]


def hung_up(sock) -> bool:
    """True once the peer closed the connection (EOF is pending on the socket)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class FaultyServer:
    """Each distinct prompt first gets one fault (in turn), then a good reply; a prompt
    mentioning 'person 0' always gets 500. Counts requests and the most in flight.

    In flight means a client is still waiting: a 'slow' request whose client timed out
    and hung up no longer counts, although its handler thread sleeps on. The client
    closes that socket before it releases its concurrency slot, so the hang-up is
    already visible when the next request arrives."""

    def __init__(self, always_ok=False):
        self.lock = threading.Lock()
        self.seen, self.requests, self.max_in_flight = {}, 0, 0
        self.waiting = set()  # sockets of requests whose client has not hung up
        self.always_ok = always_ok
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][-1]["content"]
                with server.lock:
                    server.requests += 1
                    server.waiting = {sock for sock in server.waiting if not hung_up(sock)} | {self.connection}
                    server.max_in_flight = max(server.max_in_flight, len(server.waiting))
                    attempt = server.seen.get(text, 0)
                    server.seen[text] = attempt + 1
                    fault = None if server.always_ok or attempt else FAULTS[len(server.seen) % len(FAULTS)]
                try:
                    if "person 0 " in text and not server.always_ok:
                        fault = "500"
                    time.sleep(0.02)
                    if fault == "slow":
                        time.sleep(1.5)
                    if fault in ("429", "500"):
                        return self._send(int(fault), b'{"error": "busy"}')
                    if fault == "not json":
                        return self._send(200, b"<html>oops")
                    if fault == "no choices":
                        return self._send(200, b'{"id": "x"}')
                    content = (
                        "" if fault == "empty" else f"Question: summary {hashlib.sha1(text.encode()).hexdigest()[:8]}"
                    )
                    self._send(200, json.dumps({"choices": [{"message": {"content": content}}]}).encode())
                finally:
                    with server.lock:
                        server.waiting.discard(self.connection)

            def _send(self, code, payload):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def steps(tmp_path):
    records = [{**SEARCH, "id": f"s{i}", "question": f"Where was person {i} born?"} for i in range(4)]
    out = str(tmp_path / "steps.parquet")
    convert(write_jsonl(tmp_path / "in.jsonl", records), out, "search_agent", "stepwise")
    return out  # 4 trajectories x 3 steps


def run_summaries(steps, out, url, cache):
    script = os.path.join(REPO, "data_preprocess", "add_summaries.py")
    return subprocess.run(
        [
            sys.executable,
            script,
            "--input_file",
            steps,
            "--output_file",
            out,
            "--backend",
            "openai",
            "--base_url",
            url,
            "--model",
            "m",
            "--max_concurrent",
            "3",
            "--max_retries",
            "3",
            "--timeout",
            "0.5",
            "--backoff",
            "0.05",
            "--cache_dir",
            cache,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OPENAI_API_KEY": "test"},
    )


def test_openai_backend_survives_faults_and_resumes_from_cache(steps, tmp_path):
    out, cache = str(tmp_path / "sum.parquet"), str(tmp_path / "cache")
    server = FaultyServer()
    try:
        result = run_summaries(steps, out, server.url, cache)
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    summarised = pd.read_parquet(out)
    rejects = [json.loads(line) for line in open(out + ".rejects.jsonl")]
    assert len(summarised) + len(rejects) == 12
    assert len(rejects) == 3 and all("gave up after 4 attempts: HTTP 500" in r["reason"] for r in rejects)
    assert all("person 0 " in r["record"][CONTEXT_MESSAGES][0]["content"] for r in rejects)
    assert all(s.startswith("Question: summary ") for s in summarised["summary"])
    assert server.max_in_flight <= 3

    # The failed rows are retried on a re-run; everything else comes from the cache.
    healthy = FaultyServer(always_ok=True)
    try:
        again = run_summaries(steps, out, healthy.url, cache)
    finally:
        healthy.close()
    assert again.returncode == 0, again.stderr
    assert healthy.requests == 3
    assert len(pd.read_parquet(out)) == 12


def test_extractive_summary_quotes_the_facts():
    from afm_trainer.traces.formats import parse_search_agent, to_samples

    last_step = to_samples(parse_search_agent(SEARCH), "stepwise")[-1]
    summary = extractive_summary(last_step[:-1])
    assert summary.startswith("Question: Where was Ada born?")
    assert "- Ada was born in Velmora." in summary and "- Velmora is in Ostria." in summary
    assert "Reasoning: I need Ada's birthplace. Check the country." in summary


class DrippingServer:
    """Answers each request with a valid chat-completions reply, one byte every 0.2 s
    (hanging up after 4 s of it, so a client that waits for it all is not held long)."""

    REPLY = json.dumps({"choices": [{"message": {"content": "Question: dripped"}}]}).encode()

    def __init__(self):
        self.requests = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn):
        with conn:
            received = b""
            while b"\r\n\r\n" not in received:
                received += conn.recv(65536)
            head, _, body = received.partition(b"\r\n\r\n")
            length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
            while len(body) < length:
                body += conn.recv(65536)
            self.requests += 1
            reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
                len(self.REPLY),
                self.REPLY,
            )
            started = time.monotonic()
            try:
                for i in range(len(reply)):
                    if time.monotonic() - started > 4:
                        return
                    conn.sendall(reply[i : i + 1])
                    time.sleep(0.2)
            except OSError:  # the client hung up
                return

    def close(self):
        self.listener.close()


def test_the_timeout_bounds_the_whole_request_not_each_read():
    from afm_trainer.data.summaries import OpenAISummarizer, SummaryError

    server = DrippingServer()
    context = [{"role": "user", "content": "Where was person 1 born?"}]
    try:
        summarizer = OpenAISummarizer(server.url, "m", max_retries=0, timeout_s=1, api_key="test")
        started = time.monotonic()
        (result,) = summarizer.summarize([context])
        took = time.monotonic() - started
        assert isinstance(result, SummaryError), result
        assert str(result) == "gave up after 1 attempts: no full reply within 1 s"
        assert took < 1.5, took

        # A timed-out request is retried, as before, and the row is then rejected.
        retrying = OpenAISummarizer(server.url, "m", max_retries=1, timeout_s=1, backoff_s=0.01, api_key="test")
        started = time.monotonic()
        (result,) = retrying.summarize([context])
        assert isinstance(result, SummaryError) and "gave up after 2 attempts: no full reply" in str(result)
        assert retrying.requests_sent == 2 and time.monotonic() - started < 3
    finally:
        server.close()
