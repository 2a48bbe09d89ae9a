"""The search tool over HTTP, shaped like the retrieval servers of agent-RL projects.

    python -m afm_trainer.tools.search_server --corpus corpus.jsonl [--host 127.0.0.1] [--port 8000]

POST /retrieve {"queries": ["..."], "topk": 3} -> {"result": [[{"title", "content", "score"}, ...], ...]}
GET /health -> {"status": "ok", "documents": N}
Requests are bounded (body size, number and length of queries, topk); anything
malformed gets a 4xx with a message, never a crash.
"""

from __future__ import annotations

import argparse

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from afm_trainer.tools.search import SearchIndex

MAX_BODY_BYTES = 64 * 1024
MAX_QUERIES = 64
MAX_QUERY_CHARS = 1000
MAX_TOPK = 50


class RetrieveRequest(BaseModel):
    queries: list[str] = Field(min_length=1, max_length=MAX_QUERIES)
    topk: int = Field(default=3, ge=1, le=MAX_TOPK)


def create_app(index: SearchIndex) -> FastAPI:
    app = FastAPI(title="afm-trainer search")

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        return await call_next(request)

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
        return {"result": index.search(body.queries, body.topk)}

    return app


def main(argv=None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve BM25 search over a JSONL corpus.")
    parser.add_argument("--corpus", required=True, help="JSONL, one {title, content} document a line")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(SearchIndex.from_jsonl(args.corpus)), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
