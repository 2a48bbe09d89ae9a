"""Summaries of the context of each stepwise sample (seed 002): question, reasoning so
far, and the key facts quoted verbatim from the search results; and the two summary
datasets made from them.

Two backends, one interface (``summarize(contexts) -> list[str | Exception]``):
- ``extractive``: offline and deterministic, built from the context itself;
- ``openai``: any OpenAI-compatible chat-completions server (key from OPENAI_API_KEY),
  with a concurrency cap, a timeout on each request as a whole (connecting, sending
  and reading the full reply, however slowly the server trickles it), retries with
  exponential backoff on 429/5xx/timeouts/malformed replies, and an on-disk cache keyed
  by content, so a re-run after a crash only asks for what is missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re

from afm_trainer.models.special_tokens import reserved_token_in, trace_tag_in

SYSTEM_PROMPT = (
    "Summarise the agent's progress for a colleague who will continue the task. Write exactly three "
    "sections:\nQuestion: the question to answer.\nReasoning: one or two sentences on what has been "
    "established and what is still open.\nKey facts: the facts from the search results that matter, "
    "quoted verbatim, one per line."
)

THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
INFORMATION = re.compile(r"<information>(.*?)</information>", re.DOTALL)
SEARCH = re.compile(r"<search>(.*?)</search>", re.DOTALL)
WORD = re.compile(r"[A-Za-z0-9]+")
STOPWORDS = set(
    "the a an of in on at to is was were be by for and or with what which who whom where when how did does do".split()
)


def context_text(messages: list[dict]) -> str:
    """The sample's context (everything before its target turn) as one plain text."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _first_sentence(text: str) -> str:
    text = text.strip()
    match = re.search(r"(.+?[.!?])(\s|$)", text)
    return match.group(1) if match else text


def extractive_summary(messages: list[dict], max_facts: int = 4) -> str:
    """Question, the gist of each reasoning step, and verbatim sentences from the search
    results that share content words with the question or the queries."""
    question = next((m["content"] for m in messages if m["role"] == "user"), None)
    if question is None:
        raise SummaryError("no user turn in the context to summarise")
    assistant = " ".join(m["content"] for m in messages if m["role"] == "assistant")
    reasoning = [_first_sentence(t) for t in THINK.findall(assistant)]
    wanted = {w.lower() for w in WORD.findall(question + " " + " ".join(SEARCH.findall(assistant)))} - STOPWORDS
    facts = []
    for block in INFORMATION.findall(" ".join(m["content"] for m in messages if m["role"] != "assistant")):
        for line in block.splitlines():
            body = re.sub(r"^\[\d+\]\s*", "", line)
            for sentence in re.split(r"(?<=[.!?])\s+", body.split(": ", 1)[-1]):
                if sentence and wanted & {w.lower() for w in WORD.findall(sentence)} and sentence not in facts:
                    facts.append(sentence)
    lines = [
        f"Question: {question}",
        f"Reasoning: {' '.join(reasoning) if reasoning else 'nothing yet.'}",
        "Key facts:",
    ]
    lines += [f"- {fact}" for fact in facts[:max_facts]] or ["- none yet."]
    return "\n".join(lines)


class SummaryError(Exception):
    """A summary that could not be had after every retry."""


class OpenAISummarizer:
    """Summaries from an OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str,
        max_concurrent: int = 8,
        cache_dir: str | None = None,
        max_retries: int = 5,
        timeout_s: float = 60.0,
        backoff_s: float = 1.0,
        api_key: str | None = None,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.max_concurrent = max_concurrent
        self.cache_dir = cache_dir
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.requests_sent = 0
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)

    def _cache_path(self, text: str) -> str | None:
        if not self.cache_dir:
            return None
        key = hashlib.sha256(json.dumps([self.model, SYSTEM_PROMPT, text]).encode()).hexdigest()
        return os.path.join(self.cache_dir, f"{key}.json")

    async def _post(self, client, body: dict):
        """One request, bounded as a whole by ``timeout_s`` (httpx's own timeouts bound
        each connect, read and write alone: a reply dripped byte by byte never trips them)."""
        import httpx

        try:
            return await asyncio.wait_for(client.post(self.url, json=body, timeout=self.timeout_s), self.timeout_s)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise TimeoutError(f"no full reply within {self.timeout_s:g} s") from None

    async def _ask(self, client, semaphore, text: str) -> str:
        cache_path = self._cache_path(text)
        if cache_path and os.path.exists(cache_path):
            with open(cache_path) as f:
                return json.load(f)["summary"]
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}],
            "temperature": 0,
        }
        last_error = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))
            async with semaphore:
                self.requests_sent += 1
                try:
                    reply = await self._post(client, body)
                except TimeoutError as exc:  # retried, as are the errors below
                    last_error = str(exc)
                    continue
                except Exception as exc:  # refused or reset connections
                    last_error = f"{type(exc).__name__}"
                    continue
            if reply.status_code == 429 or reply.status_code >= 500:
                last_error = f"HTTP {reply.status_code}"
                retry_after = reply.headers.get("retry-after")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    await asyncio.sleep(min(float(retry_after), 30.0))
                continue
            if reply.status_code != 200:  # 4xx other than 429 will not get better
                raise SummaryError(f"HTTP {reply.status_code}: {reply.text[:200]}")
            try:
                summary = reply.json()["choices"][0]["message"]["content"].strip()
                if not summary:
                    raise ValueError("empty content")
            except Exception as exc:
                last_error = f"malformed reply ({type(exc).__name__}: {str(exc)[:80]})"
                continue
            if cache_path:
                with open(cache_path + ".tmp", "w") as f:
                    json.dump({"summary": summary}, f)
                os.replace(cache_path + ".tmp", cache_path)
            return summary
        raise SummaryError(f"gave up after {self.max_retries + 1} attempts: {last_error}")

    async def _run(self, texts: list[str]) -> list:
        import httpx

        semaphore = asyncio.Semaphore(self.max_concurrent)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limits = httpx.Limits(max_connections=self.max_concurrent)
        async with httpx.AsyncClient(headers=headers, limits=limits) as client:
            return await asyncio.gather(*(self._ask(client, semaphore, t) for t in texts), return_exceptions=True)

    def summarize(self, contexts: list[list[dict]]) -> list:
        """A summary (str) or the exception that ended its retries, per context."""
        return asyncio.run(self._run([context_text(c) for c in contexts]))


def _or_error(summarise, context):
    """A summary, or the exception that says why there is none (the row is then rejected)."""
    try:
        return summarise(context)
    except SummaryError as exc:
        return exc


def checked_summary(summary):
    """A summary is written inside <summary>...</summary> and trained: like any text from
    data it holds no reserved chat token and no trace tag (a server's reply may)."""
    if isinstance(summary, BaseException):
        return summary
    if found := reserved_token_in(summary) or trace_tag_in(summary):
        return SummaryError(f"the summary contains {found!r}, which text written inside <summary> may not hold")
    return summary


def add_summaries(input_file: str, output_file: str, backend: str = "extractive", **openai_options) -> dict:
    """Add a ``summary`` column to stepwise samples (the context before each target turn).
    A row whose summary finally fails goes to OUTPUT.rejects.jsonl with the reason, never
    into the output with an empty summary. ``openai_options`` are OpenAISummarizer's."""
    import pyarrow as pa

    from afm_trainer.data.convert import messages_column
    from afm_trainer.data.parquet_io import (
        InputError,
        cannot_write,
        check_output_file,
        read_table,
        reject_line,
        remove_quietly,
        write_rows,
    )

    table = read_table(input_file)
    key = messages_column(table.column_names)
    if key not in table.column_names:
        raise InputError(f"{input_file} has no `{key}` column (convert it with convert_traces.py --mode stepwise)")
    rows = table.to_pylist()
    contexts = [row[key][:-1] for row in rows]
    check_output_file(output_file)
    if backend == "extractive":
        results = [_or_error(extractive_summary, c) for c in contexts]
    else:
        results = OpenAISummarizer(**openai_options).summarize(contexts)
    kept, rejected = [], 0
    rejects_path = output_file + ".rejects.jsonl"
    try:  # a failed write (a full disk) leaves no temporary and the earlier files as they were
        with open(rejects_path + ".tmp", "w") as rejects:
            for index, (row, result) in enumerate(zip(rows, results)):
                result = checked_summary(result)
                if isinstance(result, BaseException):
                    rejected += 1
                    rejects.write(reject_line(f"row {index}", str(result), row))
                else:
                    kept.append({**row, "summary": result})
        write_rows(kept, table.schema.append(pa.field("summary", pa.string())), output_file)
        os.replace(rejects_path + ".tmp", rejects_path)
    except OSError as exc:
        remove_quietly(rejects_path + ".tmp")
        raise cannot_write(rejects_path, exc) from None
    except BaseException:
        remove_quietly(rejects_path + ".tmp")
        raise
    return {"samples": len(rows), "summarised": len(kept), "rejected": rejected}


def summary_prefix(messages: list[dict], summary: str) -> list[dict]:
    """Dataset 1: full context -> "<summary>...</summary>" + the original target turn."""
    *context, target = messages
    content = f"<summary>{summary}</summary>\n{target['content']}"
    return [{**m, "train": False} for m in context] + [{**target, "content": content, "train": True}]


def summary_only(messages: list[dict], summary: str) -> list[dict]:
    """Dataset 2: the summary alone as the user turn -> the original target turn."""
    return [{"role": "user", "content": summary, "train": False}, {**messages[-1], "train": True}]


def write_summary_datasets(input_file: str, prefix_file: str, only_file: str) -> int:
    """The summary-prefix and summary-only datasets of summarised samples; returns their size."""
    from afm_trainer.data.convert import (
        CONTEXT_MESSAGES,
        has_untrained_assistant_text,
        messages_column,
        with_messages_column,
    )
    from afm_trainer.data.parquet_io import check_output_file, read_table, write_rows

    table = read_table(input_file, "summary", "run add_summaries.py first")
    check_output_file(prefix_file)
    check_output_file(only_file)
    key = messages_column(table.column_names)
    rows = table.to_pylist()
    for make, path in ((summary_prefix, prefix_file), (summary_only, only_file)):
        samples = [make(row[key], row["summary"]) for row in rows]
        column = CONTEXT_MESSAGES if any(map(has_untrained_assistant_text, samples)) else "messages"
        schema = with_messages_column(table.schema, column)
        write_rows([{**row, column: sample} for row, sample in zip(rows, samples)], schema, path)
    return len(rows)
