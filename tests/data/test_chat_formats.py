"""The chat formats (OpenAI messages in full, ShareGPT/LLaMA-Factory, KTO labels), ``--format
auto``, and what is trained: expected messages, masks and trained text are written by hand
here in each format's documented shape, never taken from the code's output."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from afm_trainer.data.convert import CONTEXT_MESSAGES, convert
from afm_trainer.data.parquet_io import InputError
from afm_trainer.data.sft_dataset import AgentSFTDataset
from afm_trainer.traces.formats import student_answer
from afm_trainer.traces.registry import UnknownFormat, format_of
from tests.conftest import REPO

CONVERT = os.path.join(REPO, "data_preprocess", "convert_traces.py")

AREA_SCHEMA = {
    "name": "calculate_area",
    "description": "Area of a shape",
    "parameters": {"type": "object", "properties": {"shape": {"type": "string"}}, "required": ["shape"]},
}
# LLaMA-Factory's ShareGPT tool-call shape (data/README.md, glaive_toolcall_en_demo.json):
# tools and function calls are JSON strings.
SHAREGPT_TOOLS = {
    "conversations": [
        {"from": "human", "value": "Area of a 5 by 3 rectangle?"},
        {"from": "function_call", "value": '{"name": "calculate_area", "arguments": {"shape": "rectangle"}}'},
        {"from": "observation", "value": '{"area": 15}'},
        {"from": "gpt", "value": "The area is 15."},
    ],
    "system": "You are a geometry helper.",
    "tools": json.dumps([AREA_SCHEMA]),
}
# OpenAI chat: tools as a list, a call with content null and arguments as a JSON string,
# content as text parts, the developer role, reasoning_content, a legacy function_call.
OPENAI_FULL = {
    "tools": [{"type": "function", "function": AREA_SCHEMA}],
    "messages": [
        {"role": "developer", "content": "Answer briefly."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Area of a square,"}, {"type": "text", "text": "side 2?"}],
        },
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "I should call the tool.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "calculate_area", "arguments": '{"shape": "square"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
        {
            "role": "assistant",
            "content": "Checking once more.",
            "function_call": {"name": "calculate_area", "arguments": {}},
        },
        {"role": "function", "name": "calculate_area", "content": "4"},
        {"role": "assistant", "content": "It is 4."},
    ],
}


def write_json(path, records, array=False) -> str:
    with open(path, "w") as f:
        if array:
            json.dump(records, f)
        else:
            f.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


def trained_text(nano_model, parquet) -> list[tuple[str, list[str]]]:
    """Each sample as training tokenizes it: (the whole text, the trained spans as text)."""
    tokenizer = AutoTokenizer.from_pretrained(nano_model)
    config = OmegaConf.create({"pad_mode": "no_padding", "max_length": 4096, "truncation": "error"})
    out = []
    for item in AgentSFTDataset(str(parquet), tokenizer, config):
        ids, mask = item["input_ids"].tolist(), item["loss_mask"].tolist()
        spans, current = [], []
        for token, trained in zip(ids, mask):
            if trained:
                current.append(token)
            elif current:
                spans.append(tokenizer.decode(current))
                current = []
        if current:
            spans.append(tokenizer.decode(current))
        out.append((tokenizer.decode(ids), spans))
    return out


def test_sharegpt_tool_calls_train_exactly_the_templates_tokens(tmp_path, nano_model):
    src = write_json(tmp_path / "glaive.json", [SHAREGPT_TOOLS], array=True)
    report = convert(src, str(tmp_path / "out.parquet"), "auto")
    assert (report["format"], report["format_detected_at"], report["records_converted"]) == ("sharegpt", "index 0", 1)
    (messages,) = pd.read_parquet(tmp_path / "out.parquet")["messages"]
    assert [(m["role"], m["content"], m["train"]) for m in messages] == [
        ("system", "You are a geometry helper.", False),
        ("user", "Area of a 5 by 3 rectangle?", False),
        ("assistant", "", True),
        ("tool", '{"area": 15}', False),
        ("assistant", "The area is 15.", True),
    ]
    ((text, trained),) = trained_text(nano_model, tmp_path / "out.parquet")
    tools_line = json.dumps({"type": "function", "function": AREA_SCHEMA})
    assert text == (
        "<|im_start|>system\nYou are a geometry helper.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools_line}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\nArea of a 5 by 3 rectangle?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "calculate_area", "arguments": {"shape": "rectangle"}}\n'
        "</tool_call><|im_end|>\n"
        '<|im_start|>tool\n{"area": 15}<|im_end|>\n'
        "<|im_start|>assistant\nThe area is 15.<|im_end|>\n"
    )
    assert trained == [
        '<tool_call>\n{"name": "calculate_area", "arguments": {"shape": "rectangle"}}\n</tool_call><|im_end|>',
        "The area is 15.<|im_end|>",
    ]


def test_openai_chat_in_full(tmp_path, nano_model):
    src = write_json(tmp_path / "chat.jsonl", [OPENAI_FULL])
    convert(src, str(tmp_path / "out.parquet"), "messages")
    (row,) = pd.read_parquet(tmp_path / "out.parquet").to_dict("records")
    assert json.loads(row["tools"]) == [{"type": "function", "function": AREA_SCHEMA}]
    messages = row["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert messages[0]["content"] == "Answer briefly."
    assert messages[1]["content"] == "Area of a square,\nside 2?"
    assert messages[2]["content"] == "<think>I should call the tool.</think>"
    call = {"type": "function", "function": {"name": "calculate_area", "arguments": {"shape": "square"}}}
    assert json.loads(messages[2]["tool_calls"]) == [call]
    legacy = {"type": "function", "function": {"name": "calculate_area", "arguments": {}}}
    assert json.loads(messages[4]["tool_calls"]) == [legacy]
    assert [m["train"] for m in messages] == [False, False, True, False, True, False, True]
    ((_, trained),) = trained_text(nano_model, tmp_path / "out.parquet")
    assert trained == [
        '<think>I should call the tool.</think>\n<tool_call>\n{"name": "calculate_area", "arguments": '
        '{"shape": "square"}}\n</tool_call><|im_end|>',
        'Checking once more.\n<tool_call>\n{"name": "calculate_area", "arguments": {}}\n</tool_call><|im_end|>',
        "It is 4.<|im_end|>",
    ]
    convert(src, str(tmp_path / "drop.parquet"), "messages", reasoning="drop")
    (dropped,) = pd.read_parquet(tmp_path / "drop.parquet")["messages"]
    assert dropped[2]["content"] == ""


def test_formats_without_tools_keep_the_plain_schema(tmp_path):
    src = write_json(
        tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}]
    )
    convert(src, str(tmp_path / "chat.parquet"), "messages")
    convert(os.path.join(REPO, "examples", "traces", "search_agent.jsonl"), str(tmp_path / "s.parquet"), "search_agent")
    assert "tools" in pd.read_parquet(tmp_path / "chat.parquet").columns
    assert "tools" not in pd.read_parquet(tmp_path / "s.parquet").columns


def test_kto_labels_are_never_trained_silently(tmp_path):
    good = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "label": True}
    bad = {**good, "messages": [good["messages"][0], {"role": "assistant", "content": "5"}], "label": False}
    tagged = {"conversations": [{"from": "human", "value": "1+1?"}, {"from": "gpt", "value": "3"}], "kto_tag": False}
    src = write_json(tmp_path / "kto.jsonl", [good, bad, tagged, {**good, "label": "yes"}])
    report = convert(src, str(tmp_path / "out.parquet"), "messages")
    assert report["records_converted"] == 1
    reasons = [json.loads(line)["reason"] for line in open(tmp_path / "out.parquet.rejects.jsonl")]
    assert reasons == [
        "'label' is false: a response labelled bad is never trained as an SFT target",
        "missing or empty 'messages'",
        "'label' must be true or false, got 'yes'",
    ]
    (messages,) = pd.read_parquet(tmp_path / "out.parquet")["messages"]
    assert messages[1]["content"] == "4"


@pytest.mark.parametrize(
    "record, reason",
    [
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
            "conversations[1].from is 'bot'",
        ),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{broken"}]},
            "conversations[1].value is a string but not JSON",
        ),
        (
            {
                "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
                "tools": '[{"description": "x"}]',
            },
            "'tools'[0] has no function name",
        ),
        (
            {
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "function_call", "value": '{"name": "f", "arguments": [1]}'},
                ]
            },
            "conversations[1].tool_calls[0].arguments must be a JSON object, got a list",
        ),
    ],
)
def test_sharegpt_rejects_name_the_turn_and_field(tmp_path, record, reason):
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    src = write_json(tmp_path / "in.jsonl", [record, good])
    convert(src, str(tmp_path / "out.parquet"), "sharegpt")
    (line,) = [json.loads(line) for line in open(tmp_path / "out.parquet.rejects.jsonl")]
    assert line["where"] == "line 1" and line["reason"].startswith(reason), line["reason"]


def test_openai_rejects_name_the_message_and_part(tmp_path):
    user = {"role": "user", "content": "q"}
    records = [
        {"messages": [user, {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        {"messages": [user, {"role": "assistant", "content": None}]},
        {"messages": [user, {"role": "assistant", "content": "a"}], "tools": "not json"},
        {"messages": [user, {"role": "critic", "content": "a"}]},
    ]
    good = {"messages": [user, {"role": "assistant", "content": "a"}]}
    convert(write_json(tmp_path / "in.jsonl", [*records, good]), str(tmp_path / "out.parquet"), "messages")
    reasons = [json.loads(line)["reason"] for line in open(tmp_path / "out.parquet.rejects.jsonl")]
    assert reasons[0] == "messages[1].content[0] is a 'image_url' part: only text parts can be trained"
    assert reasons[1] == "messages[1] is empty (no content and no tool call)"
    assert reasons[2].startswith("'tools' is a string but not JSON")
    assert reasons[3].startswith("messages[1] has unknown role 'critic'")


def test_text_in_tool_schemas_and_calls_never_becomes_a_control_token(tmp_path):
    user = {"role": "user", "content": "q"}
    call = {"function": {"name": "f", "arguments": {"q": "x<|im_end|>"}}}
    records = [
        {"messages": [user, {"role": "assistant", "content": None, "tool_calls": [call]}]},
        {
            "messages": [user, {"role": "assistant", "content": "a"}],
            "tools": [{"name": "f", "description": "<|im_start|>"}],
        },
    ]
    good = {"messages": [user, {"role": "assistant", "content": "a"}]}
    convert(write_json(tmp_path / "in.jsonl", [*records, good]), str(tmp_path / "out.parquet"), "messages")
    reasons = [json.loads(line)["reason"] for line in open(tmp_path / "out.parquet.rejects.jsonl")]
    assert reasons == [
        "messages[1].tool_calls[0] contains '<|im_end|>', a reserved chat token (text is never trained as one)",
        "'tools'[0] contains '<|im_start|>', a reserved chat token (text is never trained as one)",
    ]


def test_auto_tells_each_format_and_points_other_data_elsewhere():
    assert format_of({"question": "q", "trace": []}) == "search_agent"
    assert format_of({"task": "t", "trajectory": []}) == "agent_chain"
    assert format_of(SHAREGPT_TOOLS) == "sharegpt"
    assert format_of(OPENAI_FULL) == "messages"
    assert format_of({"question": "q", "answer": "a"}) == "teacher_cot"
    with pytest.raises(UnknownFormat, match="preference pairs: convert them with data_preprocess/make_pairs.py"):
        format_of({"prompt": "p", "chosen": "a", "rejected": "b"})
    sharegpt_pair = {
        **SHAREGPT_TOOLS,
        "chosen": {"from": "gpt", "value": "a"},
        "rejected": {"from": "gpt", "value": "b"},
    }
    with pytest.raises(UnknownFormat, match="preference pairs"):
        format_of(sharegpt_pair)
    with pytest.raises(UnknownFormat, match="make_rl_data.py --qa_file"):
        format_of({"question": "q", "golden_answers": ["a", "b"]})
    with pytest.raises(UnknownFormat, match=r"no known format has these keys \(body, title\)"):
        format_of({"title": "t", "body": "b"})


def test_auto_on_the_command_line_prints_its_choice_and_fails_in_one_line(tmp_path):
    src = write_json(tmp_path / "in.json", [SHAREGPT_TOOLS], array=True)
    out = str(tmp_path / "out.parquet")
    result = subprocess.run(
        [sys.executable, CONVERT, "--format", "auto", "--input_file", src, "--output_file", out],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert f"format: sharegpt (told from index 0 of {src})" in result.stdout
    pairs = write_json(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    result = subprocess.run(
        [sys.executable, CONVERT, "--format", "auto", "--input_file", pairs, "--output_file", out],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {pairs}: cannot tell the format: line 1: these are preference pairs: convert them with "
        "data_preprocess/make_pairs.py"
    ]


def test_auto_with_nothing_to_detect_is_one_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no JSON object to detect the format from"):
        convert(str(tmp_path / "empty.jsonl"), str(tmp_path / "out.parquet"), "auto")


@pytest.mark.parametrize(
    "draft, answer",
    [
        ("Answer: Georges Bizet - he wrote it", "Georges Bizet"),
        ("Answer: -5", "-5"),
        ("So the total is \\boxed{124}.", "124"),
        ("Thus \\boxed{\\frac{1}{2}} is the ratio.", "\\frac{1}{2}"),
        ("**Answer:** Paris.", "Paris"),
        ("Let me think.\nanswer : no", "no"),
        ("<answer>Oslo</answer> Answer: Bergen", "Oslo"),
        ("I am not sure.", None),
        ("answering: x", None),
    ],
)
def test_student_answer(draft, answer):
    assert student_answer(draft) == answer


# The Agent Foundation Models' chain-of-agents style: one assistant turn with tagged
# functions, the tool's output written into the same turn by the environment.
CHAIN_OF_AGENTS = {
    "conversations": [
        {"from": "human", "value": "What is 17 * 23?"},
        {
            "from": "gpt",
            "value": "<plan>Multiply with code.</plan><code>print(17 * 23)</code><observation>391</observation>"
            "<reflection>The tool says 391.</reflection><answer>391</answer>",
        },
    ]
}


def test_tool_output_inside_a_turn_is_never_trained(tmp_path, nano_model):
    src = write_json(tmp_path / "afm.jsonl", [CHAIN_OF_AGENTS])
    convert(src, str(tmp_path / "out.parquet"), "auto")
    # verl's own dataset would train the span: the column is one it refuses.
    (messages,) = pd.read_parquet(tmp_path / "out.parquet")[CONTEXT_MESSAGES]
    assert json.loads(messages[1]["untrained_spans"]) == [[59, 89]]  # "<observation>391</observation>"
    ((_, trained),) = trained_text(nano_model, tmp_path / "out.parquet")
    assert trained == [
        "<plan>Multiply with code.</plan><code>print(17 * 23)</code>",
        "<reflection>The tool says 391.</reflection><answer>391</answer><|im_end|>",
    ]


def test_an_unclosed_span_of_tool_output_is_rejected(tmp_path):
    turn = {"from": "gpt", "value": "<code>x</code><observation>1"}
    records = [{"conversations": [CHAIN_OF_AGENTS["conversations"][0], turn]}, CHAIN_OF_AGENTS]
    convert(write_json(tmp_path / "in.jsonl", records), str(tmp_path / "out.parquet"), "sharegpt")
    (line,) = [json.loads(line) for line in open(tmp_path / "out.parquet.rejects.jsonl")]
    assert line["reason"] == "conversations[1].content: <observation> at character 14 is never closed"


def test_search_r1_rollout_text_trains_only_the_models_text(tmp_path, nano_model):
    record = {
        "prompt": "<|im_start|>user\nWho founded the archive?<|im_end|>\n<|im_start|>assistant\n",
        "response": "<search>archive founder</search>\n\n<information>[1] Archive: founded by Maren Vik.</information>"
        "\n\n<answer>Maren Vik</answer><|im_end|><|endoftext|><|endoftext|>",
    }
    src = write_json(tmp_path / "rollouts.jsonl", [record])
    report = convert(src, str(tmp_path / "out.parquet"), "auto")
    assert report["format"] == "rollout_text"
    (messages,) = pd.read_parquet(tmp_path / "out.parquet")[CONTEXT_MESSAGES]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "Who founded the archive?"),
        (
            "assistant",
            "<search>archive founder</search>\n\n<information>[1] Archive: founded by Maren Vik.</information>"
            "\n\n<answer>Maren Vik</answer>",
        ),
    ]
    ((_, trained),) = trained_text(nano_model, tmp_path / "out.parquet")
    assert trained == ["<search>archive founder</search>", "<answer>Maren Vik</answer><|im_end|>"]


def test_chatml_log_parses_into_turns(tmp_path):
    text = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\nOk.<|im_end|>\n"
    )
    convert(write_json(tmp_path / "log.jsonl", [{"text": text}]), str(tmp_path / "out.parquet"), "rollout_text")
    (messages,) = pd.read_parquet(tmp_path / "out.parquet")["messages"]
    assert [(m["role"], m["content"], m["train"]) for m in messages] == [
        ("system", "Be brief.", False),
        ("user", "Hi", False),
        ("assistant", "Hello.", True),
        ("tool", "42", False),
        ("assistant", "Ok.", True),
    ]


def test_broken_rollout_text_is_rejected_with_the_turn_named(tmp_path):
    good = {"text": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"}
    records = [
        {"text": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHel"},
        {"text": "log: <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>"},
        {"text": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>planner\nx<|im_end|>"},
        {"prompt": "Hi", "response": "Hello <|im_start|>assistant\nforged"},
        {"prompt": "Hi", "response": "<code>x</code><observation>1"},
    ]
    convert(write_json(tmp_path / "in.jsonl", [*records, good]), str(tmp_path / "out.parquet"), "rollout_text")
    reasons = [json.loads(line)["reason"] for line in open(tmp_path / "out.parquet.rejects.jsonl")]
    assert reasons == [
        "'text' turn 1 (assistant) has no <|im_end|>: the rollout was cut off",
        "'text' has text before its first <|im_start|>: 'log:'",
        "'text' turn 1 has role 'planner' (one of system, user, assistant, tool)",
        "'response'.content contains '<|im_start|>', a reserved chat token (text is never trained as one)",
        "'response'.content: <observation> at character 14 is never closed",
    ]


def test_untrained_tags_are_configurable(tmp_path, nano_model):
    record = {"prompt": "Q", "response": "<code>x</code><result>1</result><answer>1</answer>"}
    src = write_json(tmp_path / "in.jsonl", [record])
    convert(src, str(tmp_path / "out.parquet"), "rollout_text", untrained_tags=("result",))
    ((_, trained),) = trained_text(nano_model, tmp_path / "out.parquet")
    assert trained == ["<code>x</code>", "<answer>1</answer><|im_end|>"]
    with pytest.raises(InputError, match="untrained tags are tag names"):
        convert(src, str(tmp_path / "out.parquet"), "rollout_text", untrained_tags=("<result>",))


def test_alpaca_records_with_history(tmp_path):
    record = {
        "system": "Be exact.",
        "history": [["2+2?", "4"]],
        "instruction": "Add these:",
        "input": "3 and 5",
        "output": "8",
    }
    convert(write_json(tmp_path / "a.json", [record], array=True), str(tmp_path / "out.parquet"), "auto")
    (messages,) = pd.read_parquet(tmp_path / "out.parquet")["messages"]
    assert [(m["role"], m["content"], m["train"]) for m in messages] == [
        ("system", "Be exact.", False),
        ("user", "2+2?", False),
        ("assistant", "4", True),  # LLaMA-Factory trains the history's responses too
        ("user", "Add these:\n3 and 5", False),
        ("assistant", "8", True),
    ]


# LLaMA-Factory's data/README.md: the OpenAI format registered as sharegpt with tags.
DATASET_INFO = {
    "my_chats": {
        "file_name": "chats.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "system": "sys"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        },
    },
    "my_pairs": {"file_name": "pairs.json", "ranking": True},
    "from_hub": {"hf_hub_url": "someone/data"},
}


def test_a_dataset_registered_in_dataset_info_converts_under_its_name(tmp_path):
    chats = [
        {
            "sys": "Be brief.",
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
        },
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "Hello."}]},
    ]
    write_json(tmp_path / "chats.json", chats, array=True)
    info = write_json(tmp_path / "dataset_info.json", DATASET_INFO, array=True)
    out = str(tmp_path / "out.parquet")
    args = [sys.executable, CONVERT, "--dataset_info", info, "--output_file", out]
    result = subprocess.run([*args, "--dataset", "my_chats"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "2 records in: 1 converted into 1 samples, 1 rejected" in result.stdout
    (messages,) = pd.read_parquet(out)["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello."),
    ]
    (reject,) = [json.loads(line) for line in open(out + ".rejects.jsonl")]
    assert reject["where"] == "index 1" and reject["reason"].startswith("conversations[1].from is 'robot'")
    for name, error in [
        ("my_pairs", "error: dataset 'my_pairs' is preference data (ranking: true): convert it with make_pairs.py"),
        ("from_hub", "error: dataset 'from_hub' has no local file_name (hub datasets are not downloaded here)"),
        ("nope", "error: "),
    ]:
        result = subprocess.run([*args, "--dataset", name], capture_output=True, text=True)
        assert result.returncode == 1 and result.stderr.startswith(error) and len(result.stderr.splitlines()) == 1


def test_spans_whose_place_in_the_rendered_turn_is_ambiguous_are_refused(tmp_path, nano_model):
    turn = "<code>x</code><observation>1</observation>"
    call = {"function": {"name": "note", "arguments": {"text": turn}}}  # the turn's text again, inside a call
    record = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": turn, "tool_calls": [call]}]
    }
    convert(write_json(tmp_path / "in.jsonl", [record]), str(tmp_path / "out.parquet"), "messages")
    with pytest.raises(ValueError, match="does not tokenize the same as text and as a chat turn"):
        trained_text(nano_model, tmp_path / "out.parquet")
