"""The search tool over HTTP, shaped like the retrieval servers of agent-RL projects.

    python -m afm_trainer.tools.search_server --corpus corpus.jsonl [--host 127.0.0.1] [--port 8000]
        [--request_timeout 10] [--max_connections 1024]

POST /retrieve {"queries": ["..."], "topk": 3} -> {"result": [[{"title", "content", "id", "score"}, ...], ...]}
GET /health -> {"status": "ok", "documents": N}

A request that names ``return_scores`` (true or false) is a Search-R1/FlashRAG client's,
and gets the reply of Search-R1's retrieval server: {"result": [[{"document": {"id",
"contents"}, "score"}, ...], ...]} with scores, {"result": [[{"id", "contents"}, ...],
...]} without; ``contents`` is the title in double quotes, a newline and the text (the
corpus record's own ``contents`` if it had one). Without ``return_scores``, the reply
is ours, as above (documents keep the corpus record's other fields).

Requests are bounded (body size, number and length of queries, topk); anything
malformed gets a 4xx with a one-line message (never the request echoed back), never
a crash. The body cap counts the bytes actually received, so a chunked upload with
no Content-Length is cut off too. Types are strict: topk a JSON integer (not "3",
not true, not 3.0), queries a list of strings.

Connections are bounded too (``serve``): a client has ``--request_timeout`` seconds
(default 10) to send a whole request, headers and body, or it is disconnected, however
slowly it trickles bytes in; at most ``--max_connections`` are held at once (at most
half the open-file limit), and a connection beyond that first displaces the one that
has waited longest for its request, or, when every one holds a request being answered,
is refused with a 503 and closed. So stalled clients cannot starve the server of file
descriptors, and ``/health`` answers while they hang on.

A corpus line that cannot be a document (not JSON, not an object, no title or text) is
rejected at start-up, named on stderr with its reason, and the rest is served; the
server refuses to start, with one ``error:`` line, only when no line is usable.
"""

from __future__ import annotations

import argparse
import json
import sys

import h11
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr
from uvicorn.protocols.http.h11_impl import H11Protocol

from afm_trainer.tools.search import SearchIndex

MAX_BODY_BYTES = 64 * 1024
MAX_QUERIES = 64
MAX_QUERY_CHARS = 1000
MAX_TOPK = 50
REQUEST_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 1024
SHOWN_REJECTS = 20  # corpus rejects named one by one at start-up; the rest are counted


class RetrieveRequest(BaseModel):
    queries: list[StrictStr] = Field(min_length=1, max_length=MAX_QUERIES)
    topk: StrictInt = Field(default=3, ge=1, le=MAX_TOPK)
    return_scores: StrictBool | None = None  # named: the client wants Search-R1's reply


def search_r1_document(document: dict) -> dict:
    """A document as Search-R1's corpus holds it: {"id", "contents"}."""
    contents = document.get("contents")
    if not isinstance(contents, str):
        contents = f'"{document["title"]}"\n{document["content"]}'
    return {"id": document["id"], "contents": contents}


def search_r1_result(documents: list[dict], return_scores: bool) -> list[dict]:
    """One query's documents in the reply of Search-R1's retrieval server."""
    if return_scores:
        return [{"document": search_r1_document(d), "score": d["score"]} for d in documents]
    return [search_r1_document(d) for d in documents]


class BodyLimit:
    """ASGI middleware: read the whole body first, up to max_bytes, and answer 413 as
    soon as more arrives, whatever Content-Length or Transfer-Encoding announced. The
    app then gets the buffered body, so nothing downstream reads an unbounded stream."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _send_json(send, 413, f"request body over {self.max_bytes} bytes")
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:  # stop reading here: the rest is never buffered
                return await _send_json(send, 413, f"request body over {self.max_bytes} bytes")
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: wait for the disconnect

        await self.app(scope, replay, send)


async def _send_json(send, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _one_line(exc: RequestValidationError) -> str:
    """The first problem as "field: reason", without the input pydantic would echo back."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = () if first.get("type") == "json_invalid" else first.get("loc", ())  # loc is then a position
    where = ".".join(str(part) for part in loc if part != "body") or "body"
    reason = " ".join(str(first.get("msg", "invalid")).split())[:120]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {reason}{more}"


def create_app(index: SearchIndex) -> FastAPI:
    app = FastAPI(title="afm-trainer search")
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def short_validation_error(_request, exc: RequestValidationError):
        return JSONResponse({"detail": _one_line(exc)}, status_code=422)

    @app.get("/health")
    def health():
        return {"status": "ok", "documents": len(index.documents)}

    @app.post("/retrieve")
    def retrieve(body: RetrieveRequest):
        too_long = [i for i, q in enumerate(body.queries) if len(q) > MAX_QUERY_CHARS or not q.strip()]
        if too_long:
            return JSONResponse(
                {"detail": f"queries {too_long} are empty or over {MAX_QUERY_CHARS} characters"}, status_code=422
            )
        results = index.search(body.queries, body.topk)
        if body.return_scores is None:
            return {"result": results}
        return {"result": [search_r1_result(documents, body.return_scores) for documents in results]}

    return app


_BUSY = json.dumps({"detail": "too many connections"}).encode()
BUSY_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BUSY), _BUSY)
)


def guarded_protocol(request_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol (h11), with a deadline on receiving each request and
    a bound on the connections held at once.

    A connection waits for a request from when it opens, or from when its last reply was
    sent (keep-alive), until the request's body has been read whole; a connection that
    waits ``request_timeout`` seconds is closed, whatever it sends meanwhile. A new
    connection beyond ``max_connections`` closes the one that has waited longest, or,
    when none is waiting (each holds a request being answered), gets a 503 and is closed."""
    waiting_since: dict[H11Protocol, float | None] = {}  # open connections: since when each waits (None: it does not)

    class GuardedProtocol(H11Protocol):
        _deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(waiting_since) >= max_connections:
                waiting = [(since, c) for c, since in waiting_since.items() if since is not None]
                if not waiting:
                    transport.write(BUSY_REPLY)
                    transport.close()
                    return
                min(waiting, key=lambda item: item[0])[1]._drop()
            waiting_since[self] = None
            self._watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def connection_lost(self, exc) -> None:
            self._forget()
            super().connection_lost(exc)

        def _watch(self) -> None:
            """Start or stop the deadline as the connection starts or stops waiting for a request."""
            if self not in waiting_since:
                return
            waiting = self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing()
            if waiting and self._deadline is None:
                waiting_since[self] = self.loop.time()
                self._deadline = self.loop.call_later(request_timeout, self._drop)
            elif not waiting and self._deadline is not None:
                waiting_since[self] = None
                self._deadline.cancel()
                self._deadline = None

        def _forget(self) -> None:
            waiting_since.pop(self, None)
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _drop(self) -> None:
            self._forget()  # no longer counted: its socket closes on the loop's next turn
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedProtocol


def connection_limits(max_connections: int) -> tuple[int, int, int]:
    """(connections, listen backlog, open-file limit) for this process. The soft limit on
    open files is raised to the hard one (up to 65536) where it is lower; the connections
    held stay under half of it, and the backlog, which is also how many connections
    asyncio accepts in one go, under an eighth: a connection over the bound is closed a
    few loop turns after it is accepted, so a burst must not run the process out of
    descriptors meanwhile (asyncio then stops accepting for a second)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    limit = 65536 if soft == resource.RLIM_INFINITY else soft
    return max(1, min(max_connections, limit // 2)), max(16, min(2048, limit // 8)), limit


def serve(index: SearchIndex, host: str, port: int, request_timeout: float, max_connections: int) -> None:
    import uvicorn

    connections, backlog, limit = connection_limits(max_connections)
    if connections < max_connections:
        print(f"note: at most {connections} connections at once (the open-file limit is {limit})", file=sys.stderr)
    uvicorn.run(
        create_app(index),
        host=host,
        port=port,
        log_level="warning",
        http=guarded_protocol(request_timeout, connections),
        ws="none",  # no websockets: an upgraded connection would leave the protocol's count
        backlog=backlog,
        timeout_keep_alive=min(5, request_timeout),
    )


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Serve BM25 search over a JSONL corpus.")
    parser.add_argument(
        "--corpus", required=True, help='JSONL, one document a line: {"title", "content"} or {"id", "contents"}'
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--request_timeout",
        type=_positive(float),
        default=REQUEST_TIMEOUT_S,
        help="seconds a client has to send a whole request, headers and body, before it is disconnected",
    )
    parser.add_argument(
        "--max_connections",
        type=_positive(int),
        default=MAX_CONNECTIONS,
        help="connections held at once, at most (and at most half the open-file limit)",
    )
    args = parser.parse_args(argv)
    from afm_trainer.data.parquet_io import InputError

    rejects: list[str] = []
    try:
        index = SearchIndex.from_jsonl(args.corpus, rejects=rejects)
    except (InputError, ValueError) as exc:  # a missing file or no usable record: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for reject in rejects[:SHOWN_REJECTS]:
        print(f"rejected: {reject}", file=sys.stderr)
    if rejects:
        more = f" ({len(rejects) - SHOWN_REJECTS} more not shown)" if len(rejects) > SHOWN_REJECTS else ""
        print(
            f"warning: {len(rejects)} corpus records rejected{more}, {len(index.documents)} documents served",
            file=sys.stderr,
        )
    serve(index, args.host, args.port, args.request_timeout, args.max_connections)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
