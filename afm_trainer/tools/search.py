"""BM25 search over a corpus of documents (bm25s), in-process.

A corpus record is either ours, {"title", "content"}, or FlashRAG's and Search-R1's
{"id", "contents"}, whose first line is the title (often in double quotes, which are
dropped) and the rest the text (``split_contents``). Every document the index holds has
"title", "content" and "id" (the record's, else its position in the corpus), besides
the record's other fields.

The same index serves the scripted teacher, the RL tool and the HTTP server
(``afm_trainer.tools.search_server``).
"""

from __future__ import annotations

import threading

import bm25s

from afm_trainer.traces.formats import TraceError, plain_text, type_name

SHAPES = '{"title", "content"} or {"id", "contents"}'


def split_contents(contents: str) -> tuple[str, str]:
    """(title, text) of a FlashRAG/Search-R1 ``contents``: the first line, without its
    surrounding double quotes, and the lines after it."""
    title, _, text = contents.partition("\n")
    return title.strip().strip('"').strip(), text.strip()


def document_of(record, where: str, position: int) -> dict:
    """The indexed form of one corpus record (a copy); ValueError naming ``where`` and the key."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: not a JSON object")
    if "content" in record or "contents" not in record:  # ours: {"title", "content"}
        for key in ("title", "content"):
            if key not in record:
                raise ValueError(f"{where}: no {key!r} (a document is {SHAPES})")
            if not isinstance(record[key], str):
                raise ValueError(
                    f"{where}: {key!r} must be a string, got {type_name(record[key])} (a document is {SHAPES})"
                )
        document = dict(record)
    else:  # FlashRAG's and Search-R1's: {"id", "contents"}
        if not isinstance(record["contents"], str):
            raise ValueError(f"{where}: 'contents' must be a string, got {type_name(record['contents'])}")
        title, text = split_contents(record["contents"])
        document = {**record, "title": title, "content": text}
    document["id"] = str(position) if record.get("id") is None else str(record["id"])
    return document


def shown_documents(documents: list[dict]) -> tuple[list[dict], int]:
    """The documents a model's tool turn may show, and how many were refused: none whose
    title or content holds a reserved chat token (the chat template's tokenizer would
    read it as a control token) or a trace tag (it would end the ``<information>`` block
    early, or put an answer in the response the reward reads). Refused, never rewritten,
    as the training data's documents are (afm_trainer.traces.formats)."""
    shown = []
    for document in documents:
        try:
            for key in ("title", "content"):
                plain_text(document[key], key, tag="information")
        except TraceError:
            continue
        shown.append(document)
    return shown, len(documents) - len(shown)


class SearchIndex:
    def __init__(self, documents: list[dict], wheres: list[str] | None = None):
        """``documents``: corpus records of either shape; ``wheres``: where each came from,
        for errors (default ``document i``)."""
        if not documents:
            raise ValueError("the corpus is empty")
        wheres = wheres or [f"document {i}" for i in range(len(documents))]
        # Copies: the caller's records stay as they were.
        self._index([document_of(record, where, i) for i, (record, where) in enumerate(zip(documents, wheres))])

    def _index(self, documents: list[dict]) -> None:
        """Index documents already in their indexed form (``document_of``)."""
        self.documents = documents
        tokens = self._tokenize([f"{d['title']} {d['content']}" for d in documents])
        if not tokens.vocab:  # bm25s would fail on it with an obscure message
            raise ValueError("no document has a word to index (words of two or more letters, not stopwords)")
        self._retriever = bm25s.BM25()
        self._retriever.index(tokens, show_progress=False)
        self._lock = threading.Lock()  # retrieval shares scratch state

    @classmethod
    def from_jsonl(cls, path: str, rejects: list[str] | None = None) -> SearchIndex:
        """The index of a corpus file: JSONL (a JSON array and parquet are read too, by
        ``afm_trainer.data.convert.read_records``). A bad record (not JSON, not an object,
        no title or text) is a ValueError naming its line; given a list ``rejects``, it is
        appended there instead ("PATH line N: reason") and the other records are indexed,
        a ValueError only if none is usable. A document without an id keeps its position
        among all the records read, rejected ones included, as its id."""
        from afm_trainer.data.convert import read_records  # the project's one reader of record files

        documents, seen = [], 0
        for position, (where, record) in enumerate(read_records(path)):
            seen += 1
            try:
                if isinstance(record, TraceError):  # a line that is not JSON
                    raise ValueError(f"{path} {where}: {record}")
                documents.append(document_of(record, f"{path} {where}", position))
            except ValueError as exc:
                if rejects is None:
                    raise
                rejects.append(str(exc))
        if not seen:
            raise ValueError(f"{path}: the corpus is empty")
        if not documents:
            raise ValueError(f"{path}: no usable document ({seen} rejected; the first: {rejects[0]})")
        index = cls.__new__(cls)
        try:
            index._index(documents)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        return index

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
