"""BM25 search over a corpus of {"title", "content"} documents (bm25s), in-process.

The same index serves the scripted teacher, the RL tool and the HTTP server
(``afm_trainer.tools.search_server``).
"""

from __future__ import annotations

import json
import threading

import bm25s


class SearchIndex:
    def __init__(self, documents: list[dict]):
        if not documents:
            raise ValueError("the corpus is empty")
        self.documents = documents
        self._retriever = bm25s.BM25()
        self._retriever.index(self._tokenize([f"{d['title']} {d['content']}" for d in documents]), show_progress=False)
        self._lock = threading.Lock()  # retrieval shares scratch state

    @classmethod
    def from_jsonl(cls, path: str) -> SearchIndex:
        with open(path, encoding="utf-8") as f:
            return cls([json.loads(line) for line in f if line.strip()])

    @staticmethod
    def _tokenize(texts: list[str]):
        return bm25s.tokenize(texts, stopwords="en", show_progress=False)

    def search(self, queries: list[str], topk: int = 3) -> list[list[dict]]:
        """For each query, up to ``topk`` documents with a positive score, best first."""
        k = min(topk, len(self.documents))
        with self._lock:
            ids, scores = self._retriever.retrieve(self._tokenize(queries), k=k, show_progress=False)
        return [
            [{**self.documents[int(i)], "score": float(s)} for i, s in zip(row_ids, row_scores) if s > 0]
            for row_ids, row_scores in zip(ids, scores)
        ]
