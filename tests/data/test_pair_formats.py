"""Preference data in the formats users have: TRL's (explicit and implicit prompt, standard
and conversational), LLaMA-Factory's ShareGPT and Alpaca, agent pairs with tool turns, KTO
data refused; auto detection, the sample files, which tokens DPO scores, TRL's own loading.
Every expected pair below is written out by hand."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch

import afm_trainer.data.pairs as pairs_module
from afm_trainer.data.pairs import (
    PAIR_SCHEMA,
    TOOL_PAIR_SCHEMA,
    convert_pairs,
    pair_format_of,
    parse_alpaca_pair,
    parse_pair,
    parse_sharegpt_pair,
)
from afm_trainer.data.parquet_io import InputError
from afm_trainer.traces.formats import TraceError
from tests.conftest import REPO
from tests.data.test_convert_traces import write_jsonl

MAKE_PAIRS = os.path.join(REPO, "data_preprocess", "make_pairs.py")
SAMPLES = os.path.join(REPO, "examples", "traces")
KTO_REASON = (
    "'label': unpaired KTO data (one response with a good/bad label) has no rejected response to pair with; "
    "afm-trainer trains pairs"
)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def call(name, **arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def defaults(pair_id="line 1", source="user", weight=1.0):
    return {"pair_id": pair_id, "source": source, "weight": weight}


def cli(*args):
    return subprocess.run([sys.executable, MAKE_PAIRS, *map(str, args)], capture_output=True, text=True, timeout=120)


def write_json_array(path, records) -> str:
    with open(path, "w") as f:
        json.dump(records, f)
    return str(path)


def rejects_of(output_file) -> dict[str, str]:
    return {r["where"]: r["reason"] for r in map(json.loads, open(f"{output_file}.rejects.jsonl"))}


# --- TRL: explicit and implicit prompts ---------------------------------------------------

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculate",
        "description": "Evaluate an arithmetic expression",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
    },
}


@pytest.mark.parametrize(
    "record, expected",
    [
        (  # TRL's own standard example, explicit prompt
            {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
            {"prompt": [user("The sky is")], "chosen": [assistant(" blue.")], "rejected": [assistant(" green.")]},
        ),
        (  # implicit, standard: the common prefix, the space before the difference left to the responses
            {"chosen": "The sky is blue.", "rejected": "The sky is green."},
            {"prompt": [user("The sky is")], "chosen": [assistant(" blue.")], "rejected": [assistant(" green.")]},
        ),
        (  # implicit, standard, no space at the split
            {"chosen": "2+2=4", "rejected": "2+2=5"},
            {"prompt": [user("2+2=")], "chosen": [assistant("4")], "rejected": [assistant("5")]},
        ),
        (  # implicit, conversational: the messages both start with
            {
                "chosen": [user("What color is the sky?"), assistant("It is blue.")],
                "rejected": [user("What color is the sky?"), assistant("It is green.")],
            },
            {
                "prompt": [user("What color is the sky?")],
                "chosen": [assistant("It is blue.")],
                "rejected": [assistant("It is green.")],
            },
        ),
        (  # implicit, several turns: the shared assistant turn stays in the prompt, before a user turn
            {
                "chosen": [user("Name a prime."), assistant("7"), user("Above 20?"), assistant("23")],
                "rejected": [user("Name a prime."), assistant("7"), user("Above 20?"), assistant("21")],
            },
            {
                "prompt": [user("Name a prime."), assistant("7"), user("Above 20?")],
                "chosen": [assistant("23")],
                "rejected": [assistant("21")],
            },
        ),
        (  # an agent pair, implicit: the same call, different results; the shared call opens both responses
            {
                "chosen": [
                    user("17 * 23?"),
                    {"role": "assistant", "content": None, "tool_calls": [call("calculate", expression="17 * 23")]},
                    {"role": "tool", "content": "391"},
                    assistant("391"),
                ],
                "rejected": [
                    user("17 * 23?"),
                    {"role": "assistant", "content": None, "tool_calls": [call("calculate", expression="17 * 23")]},
                    {"role": "tool", "content": "error: timeout"},
                    assistant("About 400."),
                ],
            },
            {
                "prompt": [user("17 * 23?")],
                "chosen": [
                    {"role": "assistant", "content": "", "tool_calls": [call("calculate", expression="17 * 23")]},
                    {"role": "tool", "content": "391"},
                    assistant("391"),
                ],
                "rejected": [
                    {"role": "assistant", "content": "", "tool_calls": [call("calculate", expression="17 * 23")]},
                    {"role": "tool", "content": "error: timeout"},
                    assistant("About 400."),
                ],
            },
        ),
        (  # an agent pair, explicit: OpenAI's call shape (arguments as a JSON string, an id) and tools
            {
                "prompt": [{"role": "system", "content": "Use the calculator."}, user("17 * 23?")],
                "tools": json.dumps([CALCULATOR]),
                "chosen": [
                    {
                        "role": "assistant",
                        "content": "Let me compute it.",
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "calculate", "arguments": '{"expression": "17 * 23"}'},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": "391"},
                    assistant("<answer>391</answer>"),
                ],
                "rejected": "<answer>340</answer>",
            },
            {
                "prompt": [{"role": "system", "content": "Use the calculator."}, user("17 * 23?")],
                "chosen": [
                    {
                        "role": "assistant",
                        "content": "Let me compute it.",
                        "tool_calls": [call("calculate", expression="17 * 23")],
                    },
                    {"role": "tool", "content": "391"},
                    assistant("<answer>391</answer>"),
                ],
                "rejected": [assistant("<answer>340</answer>")],
                "tools": [CALCULATOR],
            },
        ),
    ],
)
def test_trl_preference_formats(record, expected):
    assert parse_pair(record, "line 1") == {**expected, **defaults()}


@pytest.mark.parametrize(
    "record, reason",
    [
        (
            {"chosen": "The sky is blue", "rejected": "The sky is bright"},
            "the text 'chosen' and 'rejected' start with ends inside a word (...'The sky is b' + 'lue' / 'right'): "
            "give 'prompt'",
        ),
        (
            {"chosen": "The answer is 4", "rejected": "The answer is 4, I think"},
            "'chosen' is the start of 'rejected': no response is left after an implicit prompt",
        ),
        (
            {"chosen": "Yes.", "rejected": "No."},
            "'chosen' and 'rejected' start differently: no implicit prompt (give 'prompt')",
        ),
        ({"chosen": "Same.", "rejected": "Same."}, "chosen and rejected are the same"),
        (
            {"chosen": "The sky is blue.", "rejected": [assistant("green")]},
            "without 'prompt', 'chosen' and 'rejected' must both be strings or both be message lists "
            "(got str and a list)",
        ),
        (
            {"chosen": [user("a"), assistant("b")], "rejected": [user("c"), assistant("b")]},
            "chosen[0] and rejected[0] differ: an implicit prompt is the messages both start with (give 'prompt')",
        ),
        (
            {"chosen": [user("a"), assistant("b")], "rejected": [user("a"), assistant("b"), user("c"), assistant("d")]},
            "'chosen' is the start of 'rejected': no response is left after an implicit prompt",
        ),
        (  # what follows the shared prompt is a response: the assistant's and tools' turns only
            {"chosen": [user("a"), assistant("b"), user("c"), assistant("d")], "rejected": [user("a"), assistant("x")]},
            "chosen[2] has role 'user' (allowed: assistant, tool)",
        ),
        (
            {"chosen": [user("a"), {"role": "robot", "content": "b"}], "rejected": [user("a"), assistant("x")]},
            "chosen[1] has role 'robot' (allowed: system, user, assistant, tool)",
        ),
        (
            {"chosen": [user("a"), assistant("<answer>b")], "rejected": [user("a"), assistant("x")]},
            "chosen[1].content has broken tags: <answer> is never closed",
        ),
        (
            {
                "prompt": "q",
                "chosen": [assistant("<search>x</search><observation>found"), assistant("y")],
                "rejected": "z",
            },
            "chosen[0].content: <observation> at character 18 is never closed",
        ),
    ],
)
def test_implicit_prompt_refusals_name_the_field(record, reason):
    with pytest.raises(TraceError) as raised:
        parse_pair(record, "line 1")
    assert str(raised.value) == reason


# --- LLaMA-Factory: ShareGPT and Alpaca -------------------------------------------------

WEATHER = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def test_sharegpt_preference_record_with_a_tool_call():
    record = {
        "system": "You plan trips.",
        "tools": json.dumps([WEATHER]),
        "conversations": [
            {"from": "human", "value": "Coat in Oslo?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Oslo"}}'},
            {"from": "observation", "value": '{"high_c": -3}'},
        ],
        "chosen": {"from": "gpt", "value": "Yes, it will be -3 C."},
        "rejected": {"from": "gpt", "value": "No."},
        "weight": 0.5,
    }
    assert parse_sharegpt_pair(record, "index 0") == {
        "prompt": [
            {"role": "system", "content": "You plan trips."},
            user("Coat in Oslo?"),
            {"role": "assistant", "content": "", "tool_calls": [call("get_weather", city="Oslo")]},
            {"role": "tool", "content": '{"high_c": -3}'},
        ],
        "chosen": [assistant("Yes, it will be -3 C.")],
        "rejected": [assistant("No.")],
        "tools": [{"type": "function", "function": WEATHER}],
        **defaults("index 0", weight=0.5),
    }


def test_sharegpt_responses_may_be_agent_turns():
    record = {
        "conversations": [{"from": "human", "value": "Coat in Oslo?"}],
        "tools": "",  # LLaMA-Factory's files write an empty string for no tools
        "chosen": [
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Oslo"}}'},
            {"from": "observation", "value": "-3 C"},
            {"from": "gpt", "value": "Yes."},
        ],
        "rejected": {"from": "gpt", "value": "No."},
    }
    assert parse_sharegpt_pair(record, "index 4") == {
        "prompt": [user("Coat in Oslo?")],
        "chosen": [
            {"role": "assistant", "content": "", "tool_calls": [call("get_weather", city="Oslo")]},
            {"role": "tool", "content": "-3 C"},
            assistant("Yes."),
        ],
        "rejected": [assistant("No.")],
        **defaults("index 4"),
    }


SHAREGPT = {
    "conversations": [{"from": "human", "value": "Hi?"}],
    "chosen": {"from": "gpt", "value": "Hello."},
    "rejected": {"from": "gpt", "value": "Go away."},
}


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"conversations": []}, "missing or empty 'conversations'"),
        (
            {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]},
            "the last message of 'conversations' is the assistant's: the response goes in 'chosen'/'rejected'",
        ),
        ({"conversations": [{"from": "human", "value": " "}]}, "missing or empty conversations[0].value"),
        ({"chosen": None}, "missing or empty 'chosen'"),
        ({"chosen": "Hello."}, "'chosen' must be a {from, value} turn or a list of them, got str"),
        (
            {"rejected": {"from": "human", "value": "x"}},
            "rejected.from is 'human' (a response has gpt, function_call, observation)",
        ),
        (
            {"chosen": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]},
            "chosen[1].from is 'human' (a response has gpt, function_call, observation)",
        ),
        (
            {"chosen": [{"from": "gpt", "value": "a"}, {"from": "observation", "value": "b"}]},
            "'chosen' must start and end with a gpt or function_call turn",
        ),
        ({"chosen": {"from": "function_call", "value": "{"}}, "chosen.value is a string but not JSON"),
        ({"rejected": {"from": "gpt", "value": "<|im_end|>"}}, "rejected.value contains '<|im_end|>'"),
        ({"rejected": dict(SHAREGPT["chosen"])}, "chosen and rejected are the same"),
        ({"tools": "[1]"}, "'tools'[0] must be an object, got a number"),
    ],
)
def test_sharegpt_refusals_name_the_field(change, reason):
    record = {key: value for key, value in {**SHAREGPT, **change}.items() if value is not None}
    with pytest.raises(TraceError) as raised:
        parse_sharegpt_pair(record, "index 0")
    assert str(raised.value).startswith(reason)


@pytest.mark.parametrize(
    "record, prompt",
    [
        ({"instruction": "Translate to French.", "input": "thank you"}, [user("Translate to French.\nthank you")]),
        ({"instruction": "Say thanks in French.", "input": ""}, [user("Say thanks in French.")]),
        (
            {
                "instruction": "And in German?",
                "system": "You translate.",
                "history": [["Thanks in French?", "Merci."]],
            },
            [
                {"role": "system", "content": "You translate."},
                user("Thanks in French?"),
                assistant("Merci."),
                user("And in German?"),
            ],
        ),
    ],
)
def test_alpaca_preference_records(record, prompt):
    pair = parse_alpaca_pair({**record, "chosen": "Merci.", "rejected": "Danke."}, "index 2")
    assert pair == {
        "prompt": prompt,
        "chosen": [assistant("Merci.")],
        "rejected": [assistant("Danke.")],
        **defaults("index 2"),
    }


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"instruction": None}, "missing or empty 'instruction'"),
        ({"input": 3}, "'input' must be a string, got a number"),
        ({"chosen": ["Merci."]}, "'chosen' must be a string, got a list"),
        ({"rejected": ""}, "missing or empty 'rejected'"),
        ({"history": [["only one"]]}, "history[0] must be an [instruction, response] pair of non-empty strings"),
        ({"history": [["q", "<answer>"]]}, "history[0][1] has broken tags"),
    ],
)
def test_alpaca_refusals_name_the_field(change, reason):
    record = {"instruction": "Thanks in French?", "chosen": "Merci.", "rejected": "Danke.", **change}
    with pytest.raises(TraceError) as raised:
        parse_alpaca_pair({k: v for k, v in record.items() if v is not None}, "index 0")
    assert str(raised.value).startswith(reason)


# --- KTO data is never paired -----------------------------------------------------------

KTO_RECORDS = [
    {"prompt": "The sky is", "completion": " blue.", "label": True},  # TRL, standard
    {"prompt": [user("Sky color?")], "completion": [assistant("Green.")], "label": False},  # TRL, conversational
    {"messages": [user("Sky color?"), assistant("Blue.")], "label": True},  # LLaMA-Factory, messages
    {"instruction": "Sky color?", "output": "Blue.", "kto_tag": True},  # LLaMA-Factory, Alpaca
]


@pytest.mark.parametrize("parse", [parse_pair, parse_sharegpt_pair, parse_alpaca_pair])
@pytest.mark.parametrize("record", KTO_RECORDS)
def test_every_parser_refuses_kto_records_naming_the_label(parse, record):
    with pytest.raises(TraceError) as raised:
        parse(record, "line 1")
    key = "kto_tag" if "kto_tag" in record else "label"
    assert str(raised.value) == KTO_REASON.replace("'label'", repr(key))


def test_a_kto_file_is_refused_whole_with_every_record_counted(tmp_path):
    src = write_jsonl(tmp_path / "kto.jsonl", KTO_RECORDS)
    out = tmp_path / "out.parquet"
    result = cli("--input_file", src, "--output_file", out)
    assert result.returncode == 1
    assert result.stdout.startswith("format: kto (told from line 1): unpaired KTO data")
    kto_tag_reason = KTO_REASON.replace("'label'", "'kto_tag'")
    assert (
        result.stderr
        == f"error: none of the 4 records of {src} could be converted: 3 {KTO_REASON}; 1 {kto_tag_reason}\n"
    )
    report = json.load(open(f"{out}.report.json"))
    assert (report["format"], report["records_in"], report["records_rejected"]) == ("kto", 4, 4)
    assert list(rejects_of(out)) == ["line 1", "line 2", "line 3", "line 4"]
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


# --- auto detection and --format --------------------------------------------------------


@pytest.mark.parametrize(
    "record, name",
    [
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, "pairs"),
        ({"chosen": [], "rejected": []}, "pairs"),
        ({"prompt": "a prompt-only record"}, "pairs"),  # refused record by record, for its missing responses
        ({"conversations": [], "chosen": {}, "rejected": {}}, "sharegpt"),
        ({"instruction": "i", "input": "", "chosen": "a", "rejected": "b"}, "alpaca"),
        *[(record, "kto") for record in KTO_RECORDS],
    ],
)
def test_format_detection(record, name):
    assert pair_format_of(record) == name


def test_auto_refuses_a_file_of_no_pair_format_in_one_error_line(tmp_path):
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [user("a"), assistant("b")]}])
    result = cli("--input_file", sft, "--output_file", tmp_path / "a.parquet")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        f"error: {sft}, line 1: these records hold no 'chosen'/'rejected' response: trajectories for supervised "
        "fine-tuning go to data_preprocess/convert_traces.py\n"
    )
    other = write_jsonl(tmp_path / "other.jsonl", ["{broken", {"question": "q", "id": 3}])
    result = cli("--input_file", other, "--output_file", tmp_path / "b.parquet")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {other}, line 2: no pair format has these keys (id, question): pairs")
    assert result.stderr.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["other.jsonl", "sft.jsonl"]  # nothing written, nothing left behind


def test_auto_is_told_from_the_first_json_object_and_reported(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ["{broken", {"instruction": "Hi?", "chosen": "Hello.", "rejected": "No."}])
    report = convert_pairs(src, str(tmp_path / "out.parquet"))
    assert (report["format"], report["format_detected_at"]) == ("alpaca", "line 2")
    assert (report["records_converted"], report["records_rejected"]) == (1, 1)
    report = convert_pairs(src, str(tmp_path / "out2.parquet"), "alpaca")
    assert (report["format"], report["format_detected_at"]) == ("alpaca", None)


def test_a_named_format_reads_every_record_as_that_format(tmp_path):
    src = write_json_array(tmp_path / "sharegpt.json", [SHAREGPT])
    with pytest.raises(InputError, match=r"1 'chosen' must be a string or a list of messages, got an object"):
        convert_pairs(src, str(tmp_path / "out.parquet"), "pairs")
    assert convert_pairs(src, str(tmp_path / "out.parquet"), "sharegpt")["records_converted"] == 1
    with pytest.raises(InputError, match="unknown pair format 'kto2'"):
        convert_pairs(src, str(tmp_path / "out.parquet"), "kto2")


# --- the sample files -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, fmt, count, with_tools",
    [
        ("pairs_trl.jsonl", "pairs", 5, False),
        ("pairs_sharegpt.json", "sharegpt", 3, True),
        ("pairs_agent.jsonl", "pairs", 3, True),
    ],
)
def test_each_pair_sample_converts_with_zero_rejects(tmp_path, name, fmt, count, with_tools):
    out = tmp_path / "out.parquet"
    result = cli("--input_file", os.path.join(SAMPLES, name), "--output_file", out)
    assert result.returncode == 0, result.stderr
    first, summary = result.stdout.splitlines()[:2]
    assert first.startswith(f"format: {fmt} (told from ")
    assert summary.startswith(f"{count} records in: {count} pairs written to {out}, 0 rejected")
    assert open(f"{out}.rejects.jsonl").read() == ""
    assert pq.read_table(out).schema == (TOOL_PAIR_SCHEMA if with_tools else PAIR_SCHEMA)


def test_the_kto_sample_is_refused_with_every_record_accounted_for(tmp_path):
    src = os.path.join(SAMPLES, "kto_sharegpt.json")
    out = tmp_path / "out.parquet"
    result = cli("--input_file", src, "--output_file", out)
    assert result.returncode == 1
    assert result.stderr == f"error: none of the 3 records of {src} could be converted: 3 {KTO_REASON}\n"
    assert rejects_of(out) == {f"index {i}": KTO_REASON for i in range(3)}


# --- the written file -------------------------------------------------------------------

AGENT_PAIR = {
    "pair_id": "agent",
    "tools": [CALCULATOR],
    "prompt": "What is 17 * 23?",
    "chosen": [
        {"role": "assistant", "content": None, "tool_calls": [call("calculate", expression="17 * 23")]},
        {"role": "tool", "content": "391"},
        assistant("<answer>391</answer>"),
    ],
    # tool output written inside the turn, Search-R1's way
    "rejected": [assistant("<search>17 * 23</search><information>[1] 17 * 23 = 391</information><answer>340</answer>")],
}
PLAIN_PAIR = {
    "pair_id": "plain",
    "prompt": "Is 9 prime?",
    "chosen": "<answer>no</answer>",
    "rejected": "<answer>yes</answer>",
}


def test_tool_fields_only_in_files_that_need_them_even_when_they_appear_late(tmp_path, monkeypatch):
    monkeypatch.setattr(pairs_module, "BATCH_PAIRS", 1)  # the plain pair is written before the agent pair is read
    out = tmp_path / "mixed.parquet"
    report = convert_pairs(write_jsonl(tmp_path / "mixed.jsonl", [PLAIN_PAIR, AGENT_PAIR]), str(out))
    assert report["records_converted"] == 2 and report["tool_fields"] is True
    table = pq.read_table(out)
    assert table.schema == TOOL_PAIR_SCHEMA and table.num_rows == 2
    plain, agent = table.to_pylist()
    assert plain["prompt"] == [{"role": "user", "content": "Is 9 prime?", "tool_calls": None}]
    assert plain["tools"] is None
    assert agent["chosen"][0] == {
        "role": "assistant",
        "content": "",
        "tool_calls": '[{"type": "function", "function": {"name": "calculate", "arguments": {"expression": "17 * 23"}}}]',
    }
    assert json.loads(agent["tools"]) == [CALCULATOR]
    # the output is valid input: the same pairs again
    again = tmp_path / "again.parquet"
    convert_pairs(str(out), str(again))
    assert pq.read_table(again).to_pylist() == table.to_pylist()

    convert_pairs(write_jsonl(tmp_path / "plain.jsonl", [PLAIN_PAIR]), str(tmp_path / "plain.parquet"))
    assert pq.read_table(tmp_path / "plain.parquet").schema == PAIR_SCHEMA


def test_chosen_agent_answers_as_sft_data_keep_their_calls(tmp_path):
    from afm_trainer.data.convert import CHAT_SCHEMA
    from afm_trainer.data.pair_dataset import chosen_as_sft

    out = tmp_path / "p.parquet"
    convert_pairs(write_jsonl(tmp_path / "p.jsonl", [AGENT_PAIR]), str(out))
    assert chosen_as_sft([str(out)], str(tmp_path / "sft.parquet")) == 1
    table = pq.read_table(tmp_path / "sft.parquet")
    assert table.schema == CHAT_SCHEMA
    (row,) = table.to_pylist()
    assert [(m["role"], m["train"]) for m in row["messages"]] == [
        ("user", False),
        ("assistant", True),
        ("tool", False),
        ("assistant", True),
    ]
    assert json.loads(row["messages"][1]["tool_calls"]) == [call("calculate", expression="17 * 23")]
    assert json.loads(row["tools"]) == [CALCULATOR]


# --- what DPO scores --------------------------------------------------------------------


def scored_spans(tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    spans, current = [], []
    for token, scored in zip(ids, mask):
        if scored:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def test_dpo_scores_the_assistants_tokens_never_the_tools(tmp_path, nano_model):
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from afm_trainer.data.pair_dataset import PairCollator, PairDataset
    from afm_trainer.recipes.dpo.trainer import sequence_logps

    out = tmp_path / "agent.parquet"
    convert_pairs(write_jsonl(tmp_path / "agent.jsonl", [AGENT_PAIR, PLAIN_PAIR]), str(out))
    tokenizer = AutoTokenizer.from_pretrained(nano_model)
    config = OmegaConf.create({"pad_mode": "no_padding", "max_length": 2048, "truncation": "error"})
    dataset = PairDataset([str(out)], tokenizer, config)
    chosen, rejected = dataset[0]["chosen"], dataset[0]["rejected"]

    chosen_text = tokenizer.decode(chosen["input_ids"])
    assert chosen_text.endswith(
        "<|im_start|>user\nWhat is 17 * 23?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "calculate", "arguments": {"expression": "17 * 23"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>tool\n391<|im_end|>\n"
        "<|im_start|>assistant\n<answer>391</answer><|im_end|>\n"
    )
    assert '{"type": "function", "function": {"name": "calculate", "description"' in chosen_text  # tools rendered
    assert scored_spans(tokenizer, chosen["input_ids"].tolist(), chosen["loss_mask"].tolist()) == [
        '<tool_call>\n{"name": "calculate", "arguments": {"expression": "17 * 23"}}\n</tool_call><|im_end|>',
        "<answer>391</answer><|im_end|>",
    ]
    assert scored_spans(tokenizer, rejected["input_ids"].tolist(), rejected["loss_mask"].tolist()) == [
        "<search>17 * 23</search>",
        "<answer>340</answer><|im_end|>",
    ]

    # The trainer's sum covers exactly these tokens: with log-probs standing for "minus the id
    # of the token scored", each row's sum is minus the sum of its scored ids.
    batch = PairCollator()([dataset[0], dataset[1]])
    ids = batch["input_ids"]
    stand_in = torch.nested.nested_tensor_from_jagged(
        -torch.roll(ids.values(), -1).double(), offsets=ids.offsets(), jagged_dim=1
    )
    sums, counts = sequence_logps(stand_in, batch["loss_mask"])
    rows = [dataset[0]["chosen"], dataset[0]["rejected"], dataset[1]["chosen"], dataset[1]["rejected"]]
    assert sums.tolist() == [-float(r["input_ids"][r["loss_mask"].bool()].sum()) for r in rows]
    assert counts.tolist() == [float(r["loss_mask"].sum()) for r in rows]


# --- TRL loads the file as it is --------------------------------------------------------


def trl_python() -> str | None:
    """TRL's own environment (``make trl-env``): verl imports TRL's value-head model whenever
    TRL is importable, and TRL 1.x no longer has it, so TRL never goes into the project's."""
    python = os.environ.get("AFM_TRL_PYTHON") or os.path.join(REPO, ".venv-trl", "bin", "python")
    return python if os.path.exists(python) else None


def test_trl_prepares_the_converted_pairs_as_they_are(tmp_path, nano_model):
    python = trl_python()
    if python is None:
        pytest.skip("TRL's environment is missing: make trl-env")
    out = tmp_path / "pairs.parquet"
    convert_pairs(write_jsonl(tmp_path / "pairs.jsonl", [AGENT_PAIR, PLAIN_PAIR]), str(out))
    script = os.path.join(os.path.dirname(__file__), "trl_round_trip.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [python, script, str(out), nano_model, str(tmp_path / "trl")], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["tool_calls"] == [call("calculate", expression="17 * 23")]  # objects, not JSON text
    assert seen["tools"] == [CALCULATOR]
    assert seen["conversational"] == [True, True] and seen["prompt_kept"] == [True, True]
    assert seen["texts"]["prompt"] == "<|im_start|>user\nIs 9 prime?<|im_end|>\n<|im_start|>assistant\n"
    assert (seen["texts"]["chosen"], seen["texts"]["rejected"]) == (
        "<answer>no</answer><|im_end|>\n",
        "<answer>yes</answer><|im_end|>\n",
    )
    # DPOTrainer's own preparation: its tokenisation of the file as loaded
    prompt = seen["dpo_prompt"]
    assert prompt.startswith("<|im_start|>system\n# Tools\n") and CALCULATOR["function"]["description"] in prompt
    assert prompt.endswith("<|im_start|>user\nWhat is 17 * 23?<|im_end|>\n<|im_start|>assistant\n")
    assert seen["dpo_chosen"] == (
        '<tool_call>\n{"name": "calculate", "arguments": {"expression": "17 * 23"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>tool\n391<|im_end|>\n<|im_start|>assistant\n<answer>391</answer><|im_end|>\n"
    )
    assert seen["dpo_rejected_1"] == "<answer>yes</answer><|im_end|>\n"
