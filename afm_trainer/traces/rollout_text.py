"""Raw rollout text: what an agent RL run logs, parsed back into turns.

``rollout_text`` takes either of:
- ``{"text": "<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n...<|im_end|>\\n
  <|im_start|>assistant\\n...<|im_end|>"}``: a ChatML log, one frame a turn (roles system,
  user, assistant, tool); ``<|endoftext|>`` padding after the last frame is dropped;
- ``{"prompt": ..., "response": ...}`` (Search-R1's rollouts): the prompt as ChatML text
  (an open ``<|im_start|>assistant\\n`` at its end is where the response starts) or as the
  plain question; the response as the model wrote it, with the environment's
  ``<information>...</information>`` written into it between the model's calls.
Tool output inside an assistant turn (``<information>``, ``<observation>``, ...) is kept
as context and never trained, as in the chat formats (``afm_trainer.traces.chat``). A
frame without its ``<|im_end|>`` (a rollout cut off), text outside the frames, or a
control token left inside a turn's text is refused with the place named.
"""

from __future__ import annotations

from afm_trainer.models.special_tokens import END_OF_TEXT, IM_END, IM_START
from afm_trainer.traces.chat import chat_trajectory
from afm_trainer.traces.formats import TraceError, Trajectory, type_name

ROLES = ("system", "user", "assistant", "tool")


def chatml_messages(text: str, name: str, open_end: bool = False) -> list[tuple[str, dict]]:
    """(name, message) for each ChatML frame of ``text``. ``open_end``: the text may end
    with an opened ``<|im_start|>assistant\\n`` (a prompt waiting for its response)."""
    head, *frames = text.split(IM_START)
    if head.strip():
        raise TraceError(f"{name} has text before its first {IM_START}: {head.strip()[:40]!r}")
    if open_end and frames and frames[-1] == "assistant\n":
        frames = frames[:-1]
    named = []
    for i, frame in enumerate(frames):
        where = f"{name} turn {i}"
        role, newline, rest = frame.partition("\n")
        if not newline or role not in ROLES:
            raise TraceError(f"{where} has role {role[:20]!r} (one of {', '.join(ROLES)})")
        content, closed, tail = rest.partition(IM_END)
        if not closed:
            raise TraceError(f"{where} ({role}) has no {IM_END}: the rollout was cut off")
        last = i == len(frames) - 1
        if tail.replace(END_OF_TEXT, "").strip() if last else tail.strip():
            raise TraceError(f"{where} ({role}) has text after its {IM_END}: {tail.strip()[:40]!r}")
        named.append((where, {"role": role, "content": content}))
    return named


def _string(record: dict, key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise TraceError(f"{key!r} must be a string, got {type_name(value)}")
    return value


def parse_rollout_text(record: dict, **options) -> Trajectory:
    if "text" in record:
        named = chatml_messages(_string(record, "text"), "'text'")
    else:
        prompt, response = _string(record, "prompt"), _string(record, "response")
        if IM_START in prompt:
            named = chatml_messages(prompt, "'prompt'", open_end=True)
        else:
            named = [("'prompt'", {"role": "user", "content": prompt})]
        while response.rstrip().endswith(END_OF_TEXT):  # padding after the end
            response = response.rstrip().removesuffix(END_OF_TEXT)
        named.append(("'response'", {"role": "assistant", "content": response.removesuffix(IM_END)}))
    return chat_trajectory(record, named, None, **options)
