"""The search tool over HTTP, shaped like the retrieval servers of agent-RL projects.

    python -m afm_trainer.tools.search_server --corpus corpus.jsonl [--host 127.0.0.1] [--port 8000]

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
"""

from __future__ import annotations

import argparse
import json
import sys

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from afm_trainer.tools.search import SearchIndex

MAX_BODY_BYTES = 64 * 1024
MAX_QUERIES = 64
MAX_QUERY_CHARS = 1000
MAX_TOPK = 50


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


def main(argv=None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve BM25 search over a JSONL corpus.")
    parser.add_argument(
        "--corpus", required=True, help='JSONL, one document a line: {"title", "content"} or {"id", "contents"}'
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    from afm_trainer.data.parquet_io import InputError

    try:
        index = SearchIndex.from_jsonl(args.corpus)
    except (InputError, ValueError) as exc:  # a missing file or a bad record: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    uvicorn.run(create_app(index), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
