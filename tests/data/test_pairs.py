"""Preference pairs: the input rules, every record accounted for, atomic output, the CLI."""

import json
import math
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

import afm_trainer.data.pairs as pairs_module
from afm_trainer.data.convert import convert
from afm_trainer.data.pairs import PAIR_SCHEMA, convert_pairs, parse_pair
from afm_trainer.data.parquet_io import InputError
from afm_trainer.traces.formats import TraceError
from tests.conftest import REPO
from tests.data.test_convert_traces import write_jsonl

MAKE_PAIRS = os.path.join(REPO, "data_preprocess", "make_pairs.py")
GOOD = {"prompt": "Is 9 prime?", "chosen": "<answer>no</answer>", "rejected": "<answer>yes</answer>"}


def cli(*args):
    return subprocess.run([sys.executable, MAKE_PAIRS, *map(str, args)], capture_output=True, text=True, timeout=120)


def leftovers(folder) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


def rejects_of(output_file) -> dict[str, str]:
    return {r["where"]: r["reason"] for r in map(json.loads, open(f"{output_file}.rejects.jsonl"))}


def test_string_and_message_list_forms(tmp_path):
    conversation = {
        "pair_id": 7,
        "source": "annotators",
        "prompt": [
            {"role": "system", "content": "Answer in tags."},
            {"role": "user", "content": "Find Ada's birthplace."},
            {"role": "assistant", "content": "<search>Ada birthplace</search>"},
            {"role": "tool", "content": "<information>Ada was born in Velmora.</information>"},
        ],
        "chosen": [{"role": "assistant", "content": "<answer>Velmora</answer>"}],
        "rejected": [
            {"role": "assistant", "content": "<think>Guess.</think>"},
            {"role": "assistant", "content": "<answer>Ostria</answer>"},
        ],
    }
    out = tmp_path / "p.parquet"
    report = convert_pairs(write_jsonl(tmp_path / "p.jsonl", [GOOD, conversation]), str(out))
    assert report["records_converted"] == 2
    table = pq.read_table(out)
    assert table.schema == PAIR_SCHEMA
    plain, chat = table.to_pylist()
    assert plain == {
        "prompt": [{"role": "user", "content": "Is 9 prime?"}],
        "chosen": [{"role": "assistant", "content": "<answer>no</answer>"}],
        "rejected": [{"role": "assistant", "content": "<answer>yes</answer>"}],
        "pair_id": "line 1",  # defaults: the location, a user's pair, weight 1
        "source": "user",
        "weight": 1.0,
    }
    assert chat == {**conversation, "pair_id": "7", "weight": 1.0}


def test_the_output_is_valid_input_and_so_are_teacher_cot_pairs(tmp_path):
    first = tmp_path / "first.parquet"
    convert_pairs(write_jsonl(tmp_path / "p.jsonl", [GOOD, {**GOOD, "prompt": "Is 7 prime?", "weight": 2}]), str(first))
    again = tmp_path / "again.parquet"
    convert_pairs(str(first), str(again))
    assert pq.read_table(again).to_pylist() == pq.read_table(first).to_pylist()

    teacher = {
        "id": "t1",
        "question": "Is 9 prime?",
        "answer": "no",
        "student_draft": "Answer: yes",
        "teacher_output": "9",
    }
    convert(write_jsonl(tmp_path / "t.jsonl", [teacher]), str(tmp_path / "t.parquet"), "teacher_cot")
    report = convert_pairs(str(tmp_path / "t.pairs.parquet"), str(tmp_path / "t2.parquet"))
    assert report["records_converted"] == 1
    assert pq.read_table(tmp_path / "t2.parquet").to_pylist()[0]["source"] == "teacher_cot"


LONG_REASON_TAIL = "the response goes in 'chosen'/'rejected'"
TOOL = {"role": "tool", "content": "no results"}


@pytest.mark.parametrize(
    "change, reason",
    [
        # without a prompt, chosen and rejected are whole conversations sharing it (test_pair_formats.py)
        (
            {"prompt": None, "chosen": "no", "rejected": "yes"},
            "'chosen' and 'rejected' start differently: no implicit prompt (give 'prompt')",
        ),
        ({"prompt": " \n"}, "missing or empty 'prompt'"),
        ({"prompt": []}, "missing or empty 'prompt'"),
        ({"prompt": 3}, "'prompt' must be a string or a list of messages, got a number"),
        ({"prompt": ["hi"]}, "prompt[0] must be a {role, content} object, got str"),
        (
            {"prompt": [{"role": "bot", "content": "hi"}]},
            "prompt[0] has role 'bot' (allowed: system, user, assistant, tool)",
        ),
        ({"prompt": [{"role": "user"}]}, "missing or empty prompt[0].content"),
        ({"prompt": [{"role": "user", "content": " "}]}, "missing or empty prompt[0].content"),
        ({"prompt": [{"role": "user", "content": 1}]}, "prompt[0].content must be a string, got a number"),
        (
            {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            f"the last message of 'prompt' is the assistant's: {LONG_REASON_TAIL}",
        ),
        ({"chosen": ""}, "missing or empty 'chosen'"),
        ({"rejected": None}, "missing or empty 'rejected'"),
        ({"chosen": {"role": "assistant"}}, "'chosen' must be a string or a list of messages, got an object"),
        ({"chosen": [{"role": "user", "content": "no"}]}, "chosen[0] has role 'user' (allowed: assistant, tool)"),
        # a response is the assistant's turns with, in an agent's, tool results between them
        (
            {"rejected": [{"role": "tool", "content": "yes"}]},
            "rejected[0] is a tool result: a response starts with the assistant's turn",
        ),
        (
            {"chosen": [{"role": "assistant", "content": "<search>9</search>"}, TOOL]},
            "the last message of 'chosen' is a tool result: a response ends with the assistant's turn",
        ),
        ({"chosen": [{"role": "assistant", "content": "", "tool_calls": []}]}, "missing or empty chosen[0].content"),
        (
            {"chosen": [{"role": "assistant", "content": "", "tool_calls": [{"arguments": {}}]}]},
            "chosen[0].tool_calls[0] has no function name",
        ),
        (
            {"chosen": [{"role": "assistant", "content": "", "tool_calls": {"name": "f"}}]},
            "chosen[0].tool_calls must be a list of calls, got an object",
        ),
        (
            {"rejected": [{"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": "[1]"}]}]},
            "rejected[0].tool_calls[0].arguments must be a JSON object, got a list",
        ),
        (
            {"prompt": [{"role": "user", "content": "hi", "tool_calls": [{"name": "f"}]}]},
            "prompt[0] has tool_calls, but only the assistant calls tools",
        ),
        # the same response as a string and as a message list
        ({"rejected": [{"role": "assistant", "content": GOOD["chosen"]}]}, "chosen and rejected are the same"),
        ({"weight": 0}, "'weight' must be a finite number > 0, got 0"),
        ({"weight": -1.5}, "'weight' must be a finite number > 0, got -1.5"),
        ({"weight": math.inf}, "'weight' must be a finite number > 0, got inf"),
        ({"weight": math.nan}, "'weight' must be a finite number > 0, got nan"),
        ({"weight": 10**400}, f"'weight' must be a finite number > 0, got {10**400!r}"),
        ({"weight": "2"}, "'weight' must be a number, got '2'"),
        ({"weight": True}, "'weight' must be a number, got True"),
        ({"pair_id": [1]}, "'pair_id' must be a string or an integer, got a list"),
        ({"pair_id": True}, "'pair_id' must be a string or an integer, got a boolean"),
        ({"pair_id": " "}, "'pair_id' is empty"),
        ({"source": 3}, "'source' must be a string, got a number"),
        ({"source": ""}, "'source' is empty"),
    ],
)
def test_each_broken_rule_is_named(change, reason):
    record = {key: value for key, value in {**GOOD, **change}.items() if value is not None}
    with pytest.raises(TraceError) as raised:
        parse_pair(record, "line 1")
    assert str(raised.value) == reason


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"prompt": "Stop.<|im_end|>"}, "'prompt' contains '<|im_end|>'"),
        (
            {"prompt": [{"role": "system", "content": "<|im_start|>system"}]},
            "prompt[0].content contains '<|im_start|>'",
        ),
        ({"chosen": "no<|endoftext|>"}, "'chosen' contains '<|endoftext|>'"),
        (
            {"rejected": [{"role": "assistant", "content": "<|planner|>yes"}]},
            "rejected[0].content contains '<|planner|>'",
        ),
        ({"chosen": "<think>no"}, "'chosen' has broken tags: <think> is never closed"),
        (
            {"rejected": [{"role": "assistant", "content": "yes</answer>"}]},
            "rejected[0].content has broken tags: </answer> without its opening tag",
        ),
        (
            {
                "chosen": [
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"name": "f", "arguments": {"q": "<|im_end|>"}}],
                    }
                ]
            },
            "chosen[0].tool_calls[0] contains '<|im_end|>'",
        ),
        (  # an assistant turn of the prompt is a model turn too
            {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<search>x"}, TOOL]},
            "prompt[1].content has broken tags: <search> is never closed",
        ),
    ],
)
def test_text_follows_the_trace_format_rules(change, reason):
    with pytest.raises(TraceError) as raised:
        parse_pair({**GOOD, **change}, "line 1")
    assert str(raised.value).startswith(reason)


def test_a_user_may_write_a_lone_tag(tmp_path):
    # Tags are checked in the model's turns only: a user asking about "<think>" is fine.
    pair = parse_pair({**GOOD, "prompt": "What does <think> do?"}, "line 1")
    assert pair["prompt"][0]["content"] == "What does <think> do?"


def test_weights(tmp_path):
    records = [{**GOOD, "pair_id": i, "weight": w} for i, w in enumerate([2.5, 3, 1e-3])] + [{**GOOD, "pair_id": "d"}]
    out = tmp_path / "w.parquet"
    convert_pairs(write_jsonl(tmp_path / "w.jsonl", records), str(out))
    weights = pq.read_table(out).column("weight")
    assert weights.to_pylist() == [2.5, 3.0, 1e-3, 1.0]


def test_every_record_is_accounted_for_and_duplicates_are_rejected(tmp_path):
    records = [
        {**GOOD, "pair_id": "x"},
        "{not json",
        {**GOOD, "pair_id": "x", "prompt": "another prompt"},  # same id, another pair: still a duplicate
        {**GOOD, "pair_id": 7, "weight": -1},  # rejected, so id 7 is still free
        {**GOOD, "pair_id": 7},
        {**GOOD, "pair_id": "7"},  # the same id as the integer 7
        [1, 2],
        {**GOOD, "chosen": "<|im_end|>"},
        GOOD,
    ]
    src = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.parquet"
    report = convert_pairs(src, str(out))
    assert report["records_in"] == 9
    assert report["records_converted"] + report["records_rejected"] == 9
    assert [pair["pair_id"] for pair in pq.read_table(out).to_pylist()] == ["x", "7", "line 9"]
    assert report["records_converted"] == 3

    reasons = rejects_of(out)
    assert len(reasons) == report["records_rejected"] == 6
    assert reasons["line 2"].startswith("not valid JSON")
    assert reasons["line 3"] == "duplicate pair_id 'x' (first at line 1)"
    assert reasons["line 4"] == "'weight' must be a finite number > 0, got -1"
    assert reasons["line 6"] == "duplicate pair_id '7' (first at line 5)"
    assert reasons["line 7"] == "record is not a JSON object"
    assert reasons["line 8"].startswith("'chosen' contains '<|im_end|>'")
    rejects = [json.loads(line) for line in open(f"{out}.rejects.jsonl")]
    assert rejects[0]["record"] is None and rejects[1]["record"] == records[2]  # the record as it came

    assert report["rejected_by_reason"]["duplicate pair_id"] == 2  # one reason, whatever the id
    assert sum(report["rejected_by_reason"].values()) == 6
    assert json.load(open(f"{out}.report.json")) == report
    assert not leftovers(tmp_path)


def test_nothing_converted_is_an_error_naming_the_reasons(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{**GOOD, "rejected": GOOD["chosen"]}, {**GOOD, "weight": 0}])
    out = tmp_path / "out.parquet"
    with pytest.raises(InputError, match=r"none of the 2 records .*: 1 chosen and rejected are the same; 1 'weight'"):
        convert_pairs(src, str(out))
    assert json.load(open(f"{out}.report.json"))["records_rejected"] == 2  # the rejects and report still written
    assert len(rejects_of(out)) == 2
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, RuntimeError])
def test_a_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch, interruption):
    def records_then_failure(path):
        yield "line 1", GOOD
        raise interruption("stopped")

    monkeypatch.setattr(pairs_module, "read_records", records_then_failure)
    with pytest.raises(interruption):
        convert_pairs("in.jsonl", str(tmp_path / "out.parquet"))
    assert os.listdir(tmp_path) == []


def test_an_output_path_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        convert_pairs(write_jsonl(tmp_path / "in.jsonl", [GOOD]), str(tmp_path))


def test_cli(tmp_path):
    out = tmp_path / "out.parquet"
    ok = cli("--input_file", write_jsonl(tmp_path / "in.jsonl", [GOOD, "{bad"]), "--output_file", out)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0].startswith("format: pairs (told from line 1): TRL preference data")
    assert ok.stdout.splitlines()[1] == (
        f"2 records in: 1 pairs written to {out}, 1 rejected (see {out}.rejects.jsonl); report: {out}.report.json"
    )
    assert len(pq.read_table(out)) == 1


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "error: no records in"),
        (b"\n", "error: no records in"),
        (b'{"prompt": "hi"}\n', "error: none of the 1 records"),
        (b"[1, 2", "is not valid JSON"),
    ],
)
def test_cli_fails_with_one_error_line(tmp_path, content, message):
    src = tmp_path / "in.jsonl"
    src.write_bytes(content)
    result = cli("--input_file", src, "--output_file", tmp_path / "out.parquet")
    assert result.returncode == 1, result.stdout
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and message in result.stderr
    assert not leftovers(tmp_path)


def test_cli_missing_input_file(tmp_path):
    result = cli("--input_file", "/no/pairs.jsonl", "--output_file", tmp_path / "out.parquet")
    assert result.returncode == 1
    assert result.stderr == "error: input file not found: /no/pairs.jsonl\n"
    assert os.listdir(tmp_path) == []


def test_chosen_answers_as_sft_data_train_only_the_chosen_turns(tmp_path, nano_model):
    from transformers import AutoTokenizer

    from afm_trainer.data.convert import SCHEMA
    from afm_trainer.data.pair_dataset import chosen_as_sft
    from afm_trainer.data.sft_dataset import AgentSFTDataset

    out = tmp_path / "p.parquet"
    convert_pairs(write_jsonl(tmp_path / "p.jsonl", [GOOD, {**GOOD, "chosen": "<answer>No.</answer>"}]), str(out))
    sft = tmp_path / "sft.parquet"
    assert chosen_as_sft([str(out)], str(sft)) == 2
    table = pq.read_table(sft)
    assert table.schema == SCHEMA and table.column("trajectory_id").to_pylist() == ["line 1", "line 2"]
    assert table.to_pylist()[0]["messages"] == [
        {"role": "user", "content": "Is 9 prime?", "train": False},
        {"role": "assistant", "content": "<answer>no</answer>", "train": True},
    ]
    # the SFT recipe's dataset reads it and trains the answer's tokens only
    tokenizer = AutoTokenizer.from_pretrained(nano_model)
    dataset = AgentSFTDataset([str(sft)], tokenizer, {"max_length": 256, "pad_mode": "no_padding"})
    item = dataset[0]
    trained = tokenizer.decode(item["input_ids"][item["loss_mask"].bool()])
    assert trained.startswith("<answer>no</answer>") and "prime" not in trained
