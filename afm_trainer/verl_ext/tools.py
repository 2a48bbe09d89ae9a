"""The demo world's tools for verl's tool agent loop, and the parser that finds calls in
the policy's own tags.

The policy writes ``<search>query</search>`` or ``<code>python</code>`` and ends its turn
(rows whose ``agent_name`` is ``afm_tag_agent``, ``TagAgentLoop``);
``multi_turn.format=afm_tags`` (``AfmTagParser``) turns that into a call of the
``search`` tool (BM25 over the world's corpus, or a running
``afm_trainer.tools.search_server``) or the ``run_python`` tool (the sandbox: no network,
private file system, time and memory limits). The result comes back as a tool turn
``<information>...</information>``, the format of the training traces; verl's agent loop
gives tool turns response_mask 0, so they never enter the policy loss. A turn with an
``<answer>`` ends the episode. Turn and length limits are verl's
(``multi_turn.max_assistant_turns``, ``max_tool_response_length``, ``response_length``).

Configured by the tools.yaml that the GRPO recipe writes to OUT_DIR when it has a CORPUS or
SEARCH_URL (``multi_turn.tool_config_path``). SEARCH_URL may be our search server or
a Search-R1/FlashRAG retrieval server: the tool reads either reply (``reply_documents``).
Whatever a server sends enters the model's tool turn only through
``afm_trainer.tools.search.shown_documents``: a document holding a reserved chat token or
a trace tag is left out (counted in the tool's ``refused`` metric). A program's output is
shown with such strings neutralised (``afm_trainer.models.special_tokens.neutralised``).
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

from verl.experimental.agent_loop.agent_loop import register
from verl.experimental.agent_loop.tool_agent_loop import ToolAgentLoop
from verl.experimental.agent_loop.tool_parser import FunctionCall, ToolParser
from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from afm_trainer.traces.formats import information_text, tool_calls

TOOL_FOR_TAG = {"search": ("search", "query"), "code": ("run_python", "code")}


@ToolParser.register("afm_tags")
class AfmTagParser(ToolParser):
    """``<search>q</search>`` -> search(query=q); ``<code>c</code>`` -> run_python(code=c)."""

    async def extract_tool_calls(self, responses_ids: list[int], tools=None) -> tuple[str, list[FunctionCall]]:
        text = await asyncio.to_thread(self.tokenizer.decode, responses_ids, skip_special_tokens=True)
        if "<answer>" in text:  # a final answer: no more tool use
            return text, []
        calls = []
        for tag, body in tool_calls(text):
            name, argument = TOOL_FOR_TAG[tag]
            calls.append(FunctionCall(name=name, arguments=json.dumps({argument: body.strip()})))
        return text, calls


@register("afm_tag_agent")
class TagAgentLoop(ToolAgentLoop):
    """verl's tool agent loop for a policy that calls its tools through its own tags: the
    tools' function schemas stay out of the prompt. The policy learnt the tag protocol
    from traces that carry no schemas; a chat template with tools (Qwen2.5's) would write
    them, with an instruction to answer in JSON calls, into a system turn the policy never
    saw. (The RL dataset's length filter must not count them either: the GRPO recipe's
    ``data.tool_config_path`` is null.)"""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tool_schemas = None


def _schema(name: str, description: str, argument: str) -> OpenAIFunctionToolSchema:
    return OpenAIFunctionToolSchema.model_validate(
        {
            "type": "function",
            "function": {
                "name": name,
                "description": description,
                "parameters": {"type": "object", "properties": {argument: {"type": "string"}}, "required": [argument]},
            },
        }
    )


@functools.lru_cache(maxsize=4)
def _index(corpus: str):
    from afm_trainer.tools.search import SearchIndex

    return SearchIndex.from_jsonl(corpus)


def reply_documents(reply) -> list[dict]:
    """The first query's documents of a retrieval server's reply, each with "title" and
    "content": ours ({"result": [[{"title", "content", "score"}, ...]]}) or Search-R1's
    ({"document": {"id", "contents"}, "score"} items, or bare {"id", "contents"} items;
    the title is the first line of ``contents``). A reply of any other shape is a
    ValueError that quotes none of it (verl puts a tool's error into the tool turn)."""
    from afm_trainer.tools.search import document_of

    result = reply.get("result") if isinstance(reply, dict) else None
    if not isinstance(result, list) or not result or not isinstance(result[0], list):
        raise ValueError('the search server\'s reply is not {"result": [[documents of the query]]}')
    documents = []
    for i, item in enumerate(result[0]):
        document = item["document"] if isinstance(item, dict) and isinstance(item.get("document"), dict) else item
        documents.append(document_of(document, f"the search server's result[0][{i}]", i))
    return documents


class SearchTool(BaseTool):
    """BM25 search. config: ``corpus`` (a JSONL of {title, content} or {id, contents}) or
    ``url`` (our search server, or a Search-R1/FlashRAG retrieval server), ``topk`` (default 3)."""

    def __init__(self, config: dict, tool_schema: OpenAIFunctionToolSchema | None = None):
        if not config.get("corpus") and not config.get("url"):
            raise ValueError("the search tool needs config.corpus (a JSONL corpus) or config.url (a search server)")
        super().__init__(config, tool_schema or _schema("search", "Search the knowledge base.", "query"))
        self.topk = int(config.get("topk", 3))

    async def _documents(self, query: str) -> list[dict]:
        if self.config.get("url"):
            import httpx

            async with httpx.AsyncClient(timeout=30) as client:
                reply = await client.post(
                    self.config["url"].rstrip("/") + "/retrieve", json={"queries": [query], "topk": self.topk}
                )
                reply.raise_for_status()
                return reply_documents(reply.json())
        index = _index(self.config["corpus"])
        return (await asyncio.to_thread(index.search, [query], self.topk))[0]

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs) -> tuple[ToolResponse, float, dict]:
        from afm_trainer.tools.search import shown_documents

        query = str(parameters.get("query", "")).strip()
        documents, refused = shown_documents(await self._documents(query) if query else [])
        return ToolResponse(text=information_text(documents)), 0.0, {"documents": len(documents), "refused": refused}


class SandboxTool(BaseTool):
    """Runs Python in the sandbox. config: ``timeout_s`` (default 5), ``memory_mb`` (256)."""

    def __init__(self, config: dict, tool_schema: OpenAIFunctionToolSchema | None = None):
        super().__init__(config, tool_schema or _schema("run_python", "Run Python code; returns its output.", "code"))

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs) -> tuple[ToolResponse, float, dict]:
        from afm_trainer.models.special_tokens import neutralised
        from afm_trainer.tools.sandbox import run_python

        result = await asyncio.to_thread(
            run_python,
            str(parameters.get("code", "")),
            timeout_s=float(self.config.get("timeout_s", 5)),
            memory_mb=int(self.config.get("memory_mb", 256)),
        )
        text = neutralised(f"status: {result.status}\n{result.stdout[-1000:]}{result.stderr[-500:]}".strip())
        return ToolResponse(text=f"<information>{text}</information>"), 0.0, {"status": result.status}
