"""Chat conversations with tools: the OpenAI chat format in full, and ShareGPT
(LLaMA-Factory's format, the one the Agent Foundation Models repo trains with).

Both parse into one shape, the OpenAI one, that the tokenizer's chat template renders:
messages ``{role, content}`` with role system/user/assistant/tool, an assistant's calls
as ``tool_calls: [{"type": "function", "function": {"name", "arguments": {...}}}]``
(arguments an object, never a JSON string: templates write ``arguments | tojson``), and
the conversation's function schemas as ``tools: [{"type": "function", "function":
{...}}]``. What is trained is then exactly what the template renders at inference.

``messages`` (OpenAI; also verl's multi-turn SFT rows and LLaMA-Factory's KTO rows):
- ``messages``: role ``system``, ``developer`` (read as system), ``user``, ``assistant``,
  ``tool`` or the legacy ``function`` (read as tool);
- ``content``: a string, ``null`` on an assistant turn that only calls tools, or a list
  of ``{"type": "text", "text"}`` parts (joined with newlines; any other part is refused);
- ``tool_calls`` on an assistant turn, ``arguments`` an object or a JSON string holding
  one; the legacy ``function_call`` ``{name, arguments}`` is one such call;
- ``reasoning_content`` on an assistant turn (DeepSeek, vLLM): written before the content
  as ``<think>...</think>`` and trained, or dropped with ``reasoning="drop"``;
- ``tool_call_id`` / ``name`` on tool messages: accepted (the template does not render them);
- ``tools``: a list of function schemas, or a JSON string holding one (LLaMA-Factory); a
  bare ``{name, description, parameters}`` is wrapped as ``{"type": "function", ...}``,
  as LLaMA-Factory does for Qwen.
``sharegpt``: ``conversations`` of ``{from, value}`` with ``from`` one of ``human``,
``gpt``, ``system``, ``function_call`` (the value a JSON call ``{name, arguments}`` or a
list of them) and ``observation`` (a tool result); optional ``system`` and ``tools``.
``alpaca`` (LLaMA-Factory's other format): ``instruction``, optional ``input`` (the user
turn is ``instruction\ninput``), ``output``, optional ``system`` and ``history`` (earlier
``[instruction, response]`` pairs; their responses are trained too, as LLaMA-Factory does).

Tool output inside an assistant turn (the Agent Foundation Models' chain-of-agents style:
``<plan>...</plan><code>...</code><observation>result</observation><reflection>...``, or
Search-R1's ``<information>``): the environment wrote those spans, so they are never
trained. Each span of an ``UNTRAINED_TAGS`` tag, tags and the whitespace around it
included, is kept in the turn as context and listed in the message's ``untrained_spans``
(character offsets into its content); a tag opened and never closed is refused.

Labelled data (KTO: ``label`` or ``kto_tag``, a boolean): a response labelled false is
never an SFT target, so its record is rejected with that reason and counted; true
labels convert. Messages before the first assistant or tool message are the prompt;
the last message must be the assistant's.
"""

from __future__ import annotations

import json

from afm_trainer.traces.formats import TraceError, Trajectory, _id, _score, plain_text, type_name, well_formed_turn

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
ROLES |= {"tool": "tool", "function": "tool"}
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "observation": "tool"}
SHAREGPT_ROLES |= {"user": "user", "assistant": "assistant", "tool": "tool"}  # files written with OpenAI's names
REASONING = ("train", "drop")
UNTRAINED_TAGS = ("observation", "information", "tool_response")


def untrained_spans(content: str, name: str, tags=UNTRAINED_TAGS) -> list[list[int]]:
    """[start, end) of every span of tool output in ``content``, its tags and the whitespace
    around it included."""
    spans = []
    for tag in tags:
        opening, closing, position = f"<{tag}>", f"</{tag}>", 0
        while (start := content.find(opening, position)) >= 0:
            end = content.find(closing, start)
            if end < 0:
                raise TraceError(f"{name}: <{tag}> at character {start} is never closed")
            end += len(closing)
            position = end
            # The environment writes the whitespace around its output too ("\n\n<information>
            # ...</information>\n\n" in Search-R1): the model stopped before it.
            while start > 0 and content[start - 1].isspace():
                start -= 1
            while end < len(content) and content[end].isspace():
                end += 1
            spans.append([start, end])
    merged: list[list[int]] = []  # nested or touching spans (one result after another) become one
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def json_value(value, name: str):
    """``value``, or the JSON it holds when it is a string."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{name} is a string but not JSON ({exc.msg} at column {exc.colno})") from None


def _checked_json(value, name: str):
    """Text inside a tool schema or a call is rendered into the prompt: the same rules as content."""
    plain_text(json.dumps(value, ensure_ascii=False), name)
    return value


def parse_tools(value, name: str = "'tools'") -> list[dict] | None:
    """The function schemas as the template takes them, or None for no tools."""
    tools = json_value(value, name)
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise TraceError(f"{name} must be a list of function schemas, got {type_name(tools)}")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise TraceError(f"{name}[{i}] must be an object, got {type_name(tool)}")
        if "type" not in tool:
            tool = {"type": "function", "function": tool}
        function = tool.get("function")
        if tool["type"] != "function" or not isinstance(function, dict):
            raise TraceError(f"{name}[{i}] must be a function schema ({{type: function, function: {{name, ...}}}})")
        if not isinstance(function.get("name"), str) or not function["name"].strip():
            raise TraceError(f"{name}[{i}] has no function name")
        out.append(_checked_json(tool, f"{name}[{i}]"))
    return out


def parse_call(call, name: str) -> dict:
    """One tool call as ``{"type": "function", "function": {"name", "arguments": {...}}}``."""
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"].strip():
        raise TraceError(f"{name} has no function name")
    arguments = json_value(function.get("arguments", {}), f"{name}.arguments")
    if not isinstance(arguments, dict):
        raise TraceError(f"{name}.arguments must be a JSON object, got {type_name(arguments)}")
    plain_text(function["name"], f"{name}.name")
    return {"type": "function", "function": {"name": function["name"], "arguments": _checked_json(arguments, name)}}


def _content(value, name: str) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    if not isinstance(value, list):
        raise TraceError(f"{name} must be text or a list of text parts, got {type_name(value)}")
    texts = []
    for j, part in enumerate(value):
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            kind = part.get("type") if isinstance(part, dict) else type_name(part)
            raise TraceError(f"{name}[{j}] is a {kind!r} part: only text parts can be trained")
    return "\n".join(texts)


def _label(record: dict) -> None:
    """KTO data: a response labelled bad is never an SFT target."""
    for key in ("label", "kto_tag"):
        if key in record:
            label = record[key]
            if not isinstance(label, bool):
                raise TraceError(f"{key!r} must be true or false, got {label!r}")
            if not label:
                raise TraceError(f"{key!r} is false: a response labelled bad is never trained as an SFT target")


def chat_trajectory(
    record: dict,
    named: list[tuple[str, dict]],
    tools,
    reasoning: str = "train",
    untrained_tags: tuple[str, ...] = UNTRAINED_TAGS,
) -> Trajectory:
    """The trajectory of ``named``: (name for reasons, OpenAI-shaped message) in order."""
    _label(record)
    prompt, turns = [], []
    for name, message in named:
        role = ROLES.get(message.get("role"))
        if role is None:
            raise TraceError(f"{name} has unknown role {message.get('role')!r} (one of {', '.join(ROLES)})")
        content = _content(message.get("content"), f"{name}.content")
        out = {"role": role, "content": content}
        if role == "assistant":
            calls = message.get("tool_calls") or []
            if not isinstance(calls, list):
                raise TraceError(f"{name}.tool_calls must be a list, got {type_name(calls)}")
            calls = [parse_call(call, f"{name}.tool_calls[{k}]") for k, call in enumerate(calls)]
            if message.get("function_call"):
                calls.append(parse_call(message["function_call"], f"{name}.function_call"))
            thought = message.get("reasoning_content")
            if thought is not None and not isinstance(thought, str):
                raise TraceError(f"{name}.reasoning_content must be text, got {type_name(thought)}")
            if thought and thought.strip() and reasoning == "train":
                content = f"<think>{plain_text(thought, f'{name}.reasoning_content', tag='think')}</think>{content}"
                out["content"] = content
            if calls:
                out["tool_calls"] = calls
            if not content.strip() and not calls:
                raise TraceError(f"{name} is empty (no content and no tool call)")
            well_formed_turn(content, f"{name}.content")
            if spans := untrained_spans(content, f"{name}.content", untrained_tags):
                out["untrained_spans"] = spans
        else:
            if not content.strip():
                raise TraceError(f"{name} is empty")
            plain_text(content, f"{name}.content")
            call_id = message.get("tool_call_id")
            if call_id is not None and not isinstance(call_id, str):
                raise TraceError(f"{name}.tool_call_id must be a string, got {type_name(call_id)}")
        (turns if turns or role in ("assistant", "tool") else prompt).append(out)
    if not prompt or not any(t["role"] == "assistant" for t in turns):
        raise TraceError("needs a user message followed by at least one assistant message")
    if turns[-1]["role"] != "assistant":
        raise TraceError("the last message must be the assistant's")
    return Trajectory(_id(record), prompt, turns, score=_score(record), tools=tools)


def _message_list(record: dict, key: str) -> list:
    messages = record.get(key)
    if messages is not None and not isinstance(messages, list):
        raise TraceError(f"{key!r} must be a list, got {type_name(messages)}")
    if not messages:
        raise TraceError(f"missing or empty {key!r}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise TraceError(f"{key}[{i}] must be an object, got {type_name(message)}")
    return messages


def parse_openai_chat(record: dict, **options) -> Trajectory:
    """``options``: ``reasoning`` and ``untrained_tags``, as ``chat_trajectory`` takes them."""
    messages = _message_list(record, "messages")
    tools = parse_tools(record.get("tools"))
    return chat_trajectory(record, [(f"messages[{i}]", m) for i, m in enumerate(messages)], tools, **options)


def sharegpt_message(turn: dict, name: str) -> dict:
    """One ShareGPT ``{from, value}`` turn as an OpenAI message."""
    sender, value = turn.get("from"), turn.get("value")
    if sender == "function_call":
        calls = json_value(value, f"{name}.value")
        calls = calls if isinstance(calls, list) else [calls]
        return {"role": "assistant", "content": None, "tool_calls": calls}
    if sender not in SHAREGPT_ROLES:
        known = ", ".join([*SHAREGPT_ROLES, "function_call"])
        raise TraceError(f"{name}.from is {sender!r} (one of {known})")
    if value is not None and not isinstance(value, str):
        raise TraceError(f"{name}.value must be a string, got {type_name(value)}")
    return {"role": SHAREGPT_ROLES[sender], "content": value}


def sharegpt_messages(record: dict, key: str = "conversations") -> list[tuple[str, dict]]:
    """(name, OpenAI message) for the record's ``system`` field and every turn of ``key``."""
    named = []
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise TraceError(f"'system' must be a string, got {type_name(system)}")
    if system and system.strip():
        named.append(("'system'", {"role": "system", "content": system}))
    for i, turn in enumerate(_message_list(record, key)):
        named.append((f"{key}[{i}]", sharegpt_message(turn, f"{key}[{i}]")))
    return named


def parse_sharegpt(record: dict, **options) -> Trajectory:
    tools = parse_tools(record.get("tools"))
    return chat_trajectory(record, sharegpt_messages(record), tools, **options)


def alpaca_text(record: dict, key: str, required: bool = True) -> str:
    """An Alpaca record's text field ("" when absent and not ``required``)."""
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise TraceError(f"{key!r} must be a string, got {type_name(value)}")
    if required and not (value or "").strip():
        raise TraceError(f"missing or empty {key!r}")
    return value or ""


def alpaca_prompt(record: dict) -> list[tuple[str, dict]]:
    """(name, message) of an Alpaca record's prompt: system, history, instruction + input.
    Shared by the SFT format and the preference pairs of the same shape."""
    named = []
    if (system := alpaca_text(record, "system", required=False)).strip():
        named.append(("'system'", {"role": "system", "content": system}))
    history = record.get("history") or []
    if not isinstance(history, list):
        raise TraceError(f"'history' must be a list of [instruction, response] pairs, got {type_name(history)}")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) and x.strip() for x in pair)):
            raise TraceError(f"history[{i}] must be an [instruction, response] pair of non-empty strings")
        named += [(f"history[{i}][0]", {"role": "user", "content": pair[0]})]
        named += [(f"history[{i}][1]", {"role": "assistant", "content": pair[1]})]
    instruction, extra = alpaca_text(record, "instruction"), alpaca_text(record, "input", required=False)
    # LLaMA-Factory joins them with a newline.
    named.append(("'instruction'", {"role": "user", "content": f"{instruction}\n{extra}" if extra else instruction}))
    return named


def parse_alpaca(record: dict, **options) -> Trajectory:
    named = [*alpaca_prompt(record), ("'output'", {"role": "assistant", "content": alpaca_text(record, "output")})]
    return chat_trajectory(record, named, None, **options)
