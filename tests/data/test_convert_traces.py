"""Trajectories -> verl parquet: formats, modes, rejects, report, and the trained tokens."""

import json
import os
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from afm_trainer.data.convert import CONTEXT_MESSAGES, convert
from afm_trainer.data.pairs import PAIR_SCHEMA
from afm_trainer.data.parquet_io import InputError
from afm_trainer.data.sft_dataset import AgentSFTDataset
from tests.conftest import REPO

SEARCH = {
    "id": "s1",
    "question": "Where was Ada born?",
    "trace": [
        {"type": "reasoning", "content": "I need Ada's birthplace."},
        {"type": "search", "query": "Ada birthplace"},
        {"type": "search_result", "documents": [{"title": "Ada", "content": "Ada was born in Velmora."}]},
        {"type": "reasoning", "content": "Check the country."},
        {"type": "search", "query": "Velmora country"},
        {"type": "search_result", "documents": [{"title": "Velmora", "content": "Velmora is in Ostria."}]},
        {"type": "reasoning", "content": "Ada was born in Velmora."},
        {"type": "CorrectAnswer", "content": "Velmora"},
    ],
}
CHAIN = {
    "task": "Write add(a, b).",
    "trajectory": [
        {"agent": "Planner", "output": "Return a + b."},
        {"agent": "Coder", "output": "def add(a, b):\n    return a + b"},
        {"agent": "Reviewer", "output": "Tests pass."},
    ],
}


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


RETRY_CHAIN = {
    "id": "r1",
    "task": "Write add(a, b).",
    "trajectory": [
        {"agent": "Planner", "output": "Return a + b."},
        {"agent": "Coder", "output": "def add(a, b):\n    return a - b"},
        {"agent": "Reviewer", "output": "Wrong sign. Rejected."},
        {"agent": "Coder", "output": "def add(a, b):\n    return a + b"},
        {"agent": "Reviewer", "output": "Approved."},
    ],
}


def test_agent_chain_one_call_is_the_whole_chain_in_one_trained_turn(tmp_path):
    report = convert(
        write_jsonl(tmp_path / "c.jsonl", [RETRY_CHAIN, SEARCH]), str(tmp_path / "c.parquet"), "agent_chain", "one_call"
    )
    (conversation,) = pd.read_parquet(tmp_path / "c.parquet")["messages"]
    assert [(m["role"], m["train"]) for m in conversation] == [("user", False), ("assistant", True)]
    turns = [t["agent"] for t in RETRY_CHAIN["trajectory"]]
    said = conversation[1]["content"].split("\n<|")
    assert [s.split("|>")[0].strip("<|").capitalize() for s in said] == turns
    assert report["records_rejected"] == 1  # the search trace is not a chain


def test_score_and_difficulty_are_kept_as_columns_and_a_bad_difficulty_is_a_reject(tmp_path):
    records = [{**CHAIN, "id": "a", "score": 1, "difficulty": 3}, {**CHAIN, "id": "b"}, {**CHAIN, "difficulty": "hard"}]
    report = convert(write_jsonl(tmp_path / "c.jsonl", records), str(tmp_path / "c.parquet"), "agent_chain", "one_call")
    rows = pd.read_parquet(tmp_path / "c.parquet").to_dict("records")
    assert [(r["trajectory_id"], r["score"], r["difficulty"]) for r in rows][0] == ("a", 1.0, 3.0)
    assert pd.isna(rows[1]["score"]) and pd.isna(rows[1]["difficulty"])
    with open(tmp_path / "c.parquet.rejects.jsonl") as f:
        (reject,) = map(json.loads, f)
    assert (reject["where"], reject["reason"]) == ("line 3", "'difficulty' must be a number, got 'hard'")
    assert report["records_rejected"] == 1


def test_one_call_refuses_a_trajectory_with_tool_turns(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [SEARCH, RETRY_CHAIN])
    with pytest.raises(InputError, match="could be converted: 1 has tool or user turns"):
        convert(src, str(tmp_path / "s.parquet"), "search_agent", "one_call")
    (reject,) = [json.loads(line) for line in open(tmp_path / "s.parquet.rejects.jsonl")][:1]
    assert reject["where"] == "line 1" and "no one-call form" in reject["reason"]


@pytest.mark.parametrize(
    "role, trained, kept", [("<|planner|>", [1], 2), ("<|coder|>", [2, 4], 5), ("<|reviewer|>", [3, 5], 6)]
)
def test_agent_chain_role_trains_that_agents_turns_with_the_earlier_ones_as_context(tmp_path, role, trained, kept):
    convert(write_jsonl(tmp_path / "c.jsonl", [RETRY_CHAIN]), str(tmp_path / "c.parquet"), "agent_chain", role=role)
    table = pd.read_parquet(tmp_path / "c.parquet")
    # The planner's turns come first: no assistant text is context, and verl's own dataset may read the file.
    (conversation,) = table["messages" if role == "<|planner|>" else CONTEXT_MESSAGES]
    assert len(conversation) == kept  # nothing after the agent's last turn
    assert [i for i, m in enumerate(conversation) if m["train"]] == trained
    assert all(conversation[i]["content"].startswith(role) for i in trained)


def test_a_role_is_refused_outside_agent_chains(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [SEARCH])
    with pytest.raises(InputError, match="role"):
        convert(src, str(tmp_path / "s.parquet"), "search_agent", role="<|coder|>")


def test_search_agent_multiturn_and_stepwise(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [SEARCH])
    convert(src, str(tmp_path / "mt.parquet"), "search_agent", "multiturn")
    (conversation,) = pd.read_parquet(tmp_path / "mt.parquet")["messages"]
    roles = [m["role"] for m in conversation]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert [m["train"] for m in conversation] == [r == "assistant" for r in roles]
    assert conversation[1]["content"] == "<think>I need Ada's birthplace.</think>\n<search>Ada birthplace</search>"
    assert conversation[2]["content"].startswith("<information>[1] Ada: Ada was born in Velmora.")
    assert conversation[-1]["content"].endswith("<answer>Velmora</answer>")

    convert(src, str(tmp_path / "sw.parquet"), "search_agent", "stepwise")
    steps = pd.read_parquet(tmp_path / "sw.parquet")
    assert len(steps) == 3 and set(steps["trajectory_id"]) == {"s1"}
    for k, messages in enumerate(steps[CONTEXT_MESSAGES]):
        assert messages[-1]["role"] == "assistant" and messages[-1]["train"]
        assert sum(m["train"] for m in messages) == 1  # only the target turn
        assert len(messages) == 2 + 2 * k


def test_agent_chain_marks_each_agent_with_its_role_token(tmp_path):
    convert(write_jsonl(tmp_path / "c.jsonl", [CHAIN]), str(tmp_path / "c.parquet"), "agent_chain", "multiturn")
    (conversation,) = pd.read_parquet(tmp_path / "c.parquet")["messages"]
    assert [m["content"].split("|>")[0] + "|>" for m in conversation[1:]] == [
        "<|planner|>",
        "<|coder|>",
        "<|reviewer|>",
    ]


def test_teacher_cot_tracks_share_one_format(tmp_path):
    records = [
        {"question": "Is 7 prime?", "answer": "yes"},
        {"question": "Is 9 prime?", "answer": "no", "student_draft": "yes", "teacher_output": "9 = 3 * 3"},
    ]
    convert(write_jsonl(tmp_path / "t.jsonl", records), str(tmp_path / "t.parquet"), "teacher_cot", "multiturn")
    a, b = pd.read_parquet(tmp_path / "t.parquet")["messages"]
    assert a[1]["content"] == "<answer>yes</answer>"
    assert b[0]["content"] == "Is 9 prime?\n\nStudent draft:\nyes"
    assert b[1]["content"] == "<think>9 = 3 * 3</think><answer>no</answer>"


def test_messages_with_tool_calls(tmp_path):
    record = {
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}],
            },
            {"role": "tool", "content": "rain"},
            {"role": "assistant", "content": "<answer>rain</answer>"},
        ]
    }
    convert(write_jsonl(tmp_path / "m.jsonl", [record]), str(tmp_path / "m.parquet"), "messages", "multiturn")
    (conversation,) = pd.read_parquet(tmp_path / "m.parquet")["messages"]
    # The call stays structured (arguments an object) for the chat template to render.
    assert conversation[1]["content"] == ""
    assert json.loads(conversation[1]["tool_calls"]) == [
        {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
    ]
    assert [m["train"] for m in conversation] == [False, True, False, True]


def test_every_record_is_accounted_for(tmp_path):
    bad_type = {**SEARCH, "trace": [{"type": "guess", "content": "x"}]}
    no_answer = {**SEARCH, "trace": SEARCH["trace"][:-1]}
    records = [SEARCH, "{not json", bad_type, no_answer, {**SEARCH, "score": 0.2}, SEARCH, [1, 2]]
    src = write_jsonl(tmp_path / "in.jsonl", records)
    out = str(tmp_path / "o.parquet")
    report = convert(src, out, "search_agent", "multiturn", min_score=None, dedup=True)
    assert report["records_in"] == 7
    assert report["records_converted"] + report["records_rejected"] == 7
    rejects = [json.loads(line) for line in open(out + ".rejects.jsonl")]
    where = {r["where"]: r["reason"] for r in rejects}
    assert where["line 2"].startswith("not valid JSON")
    assert where["line 3"] == "trace[0] has unknown type 'guess'"
    assert where["line 4"] == "trace has no CorrectAnswer step"
    assert where["line 5"] == where["line 6"] == "duplicate of line 1"  # same turns, whatever the score
    assert where["line 7"] == "record is not a JSON object"
    assert rejects[1]["record"] == bad_type  # the original record is kept
    assert len(pd.read_parquet(out)) == report["records_converted"] == 1
    assert report["rejected_by_reason"]["duplicate"] == 2
    assert json.load(open(out + ".report.json")) == report

    # nothing scores 0.5 or more: an error naming the reasons, and the rejects and report still written
    with pytest.raises(InputError, match="none of the 7 records .* 1 score 0.2 below --min_score 0.5"):
        convert(src, out, "search_agent", "multiturn", min_score=0.5)
    assert json.load(open(out + ".report.json"))["rejected_by_reason"]["score 0.2 below --min_score 0.5"] == 1
    assert sum(1 for _ in open(out + ".rejects.jsonl")) == 7


def test_balance_and_label_report(tmp_path):
    records = [{"question": f"Q{i}?", "answer": "yes" if i % 4 else "no"} for i in range(40)]  # 30 yes / 10 no
    src = write_jsonl(tmp_path / "l.jsonl", records)
    down = convert(src, str(tmp_path / "d.parquet"), "teacher_cot", balance="downsample")
    assert down["label_balance"]["before_filtering"] == {"yes": 30, "no": 10}
    assert down["label_balance"]["after_filtering"] == {"yes": 10, "no": 10}
    assert down["records_rejected"] == 20 and down["rejected_by_reason"] == {"dropped by --balance downsample": 20}
    up = convert(src, str(tmp_path / "u.parquet"), "teacher_cot", balance="upsample")
    assert up["label_balance"]["after_filtering"] == {"yes": 30, "no": 30}
    assert len(pd.read_parquet(tmp_path / "u.parquet")) == 60


def test_cli_exit_codes(tmp_path):
    script = os.path.join(REPO, "data_preprocess", "convert_traces.py")
    src = write_jsonl(tmp_path / "in.jsonl", [SEARCH, "{bad"])
    ok = subprocess.run(
        [
            sys.executable,
            script,
            "--format",
            "search_agent",
            "--input_file",
            src,
            "--output_file",
            str(tmp_path / "o.parquet"),
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "2 records in: 1 converted into 1 samples, 1 rejected" in ok.stdout
    missing = subprocess.run(
        [
            sys.executable,
            script,
            "--format",
            "search_agent",
            "--input_file",
            "/no/file.jsonl",
            "--output_file",
            str(tmp_path / "x.parquet"),
        ],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: input file not found: /no/file.jsonl"


@pytest.fixture(scope="module")
def stepwise_dataset(nano_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ds")
    convert(write_jsonl(tmp / "s.jsonl", [SEARCH]), str(tmp / "s.parquet"), "search_agent", "stepwise")
    tokenizer = AutoTokenizer.from_pretrained(nano_model)
    config = OmegaConf.create({"pad_mode": "no_padding", "max_length": 1024, "truncation": "error"})
    return AgentSFTDataset(str(tmp / "s.parquet"), tokenizer, config), tokenizer


def test_trained_tokens_are_exactly_the_target_turn_and_its_end_of_turn(stepwise_dataset):
    dataset, tokenizer = stepwise_dataset
    targets = [m[-1]["content"] for m in dataset.messages]
    for item, target in zip(dataset, targets):
        ids, mask = item["input_ids"], item["loss_mask"]
        trained = ids[mask.bool()].tolist()
        assert tokenizer.decode(trained) == target + "<|im_end|>"
        first = tokenizer.encode(target, add_special_tokens=False)[0]
        assert trained[0] == first and trained[-1] == tokenizer.eos_token_id
        # the trained span is one contiguous run ending at the end-of-turn token
        positions = mask.nonzero().flatten().tolist()
        assert positions == list(range(positions[0], positions[0] + len(positions)))


def test_mismatching_chat_template_fails_loudly(stepwise_dataset):
    dataset, tokenizer = stepwise_dataset
    # A template that adds text only when it sees the whole conversation.
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = tokenizer.chat_template + "{% if messages|length > 1 %}END{% endif %}"
    dataset.tokenizer = tokenizer
    with pytest.raises(Exception, match="apply_chat_template"):
        dataset[1]


@pytest.mark.e2e
def test_converted_parquet_trains_with_the_sft_recipe(tmp_path, nano_model):
    from afm_trainer.checkpoints import tracked_step
    from tests.conftest import run_recipe

    records = [{**SEARCH, "id": f"s{i}", "question": f"Where was person {i} born?"} for i in range(6)]
    convert(write_jsonl(tmp_path / "s.jsonl", records), str(tmp_path / "s.parquet"), "search_agent", "stepwise")
    result = run_recipe(
        1,
        tmp_path / "out",
        f"MODEL={nano_model}",
        f"TRAIN_FILES={tmp_path / 's.parquet'}",
        "data.train_batch_size=6",
        "trainer.total_training_steps=2",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert tracked_step(str(tmp_path / "out")) == 2


def test_teacher_cot_wrong_drafts_become_preference_pairs(tmp_path):
    records = [
        {
            "id": "a",
            "question": "Is 9 prime?",
            "answer": "no",
            "student_draft": "Answer: Yes - odd",
            "teacher_output": "9 = 3 * 3",
        },
        {
            "id": "b",
            "question": "Is 7 prime?",
            "answer": "yes",
            "student_draft": "Answer: Yes - no divisors",
            "teacher_output": "7 is prime",
        },
        {"id": "c", "question": "Is 4 prime?", "answer": "no"},
        {"question": "Is 15 prime?", "answer": "no", "student_draft": "Answer: yes", "teacher_output": "15 = 3 * 5"},
    ]
    out = str(tmp_path / "t.parquet")
    report = convert(write_jsonl(tmp_path / "t.jsonl", records), out, "teacher_cot")
    assert report["preference_pairs"] == 2
    pairs = pq.read_table(str(tmp_path / "t.pairs.parquet"))
    assert pairs.schema == PAIR_SCHEMA  # the format preference training reads
    pair, unnamed = pairs.to_pylist()
    assert (pair["pair_id"], pair["source"], pair["weight"]) == ("a", "teacher_cot", 1.0)
    assert unnamed["pair_id"] == "line 4"  # a record without an id is named by its location
    assert pair["prompt"][0]["content"] == "Is 9 prime?\n\nStudent draft:\nAnswer: Yes - odd"
    assert pair["chosen"][0]["content"] == "<think>9 = 3 * 3</think><answer>no</answer>"
    assert pair["rejected"][0]["content"] == "Answer: Yes - odd"


def test_report_has_token_length_percentiles_with_a_tokenizer(tmp_path, nano_model):
    report = convert(
        write_jsonl(tmp_path / "s.jsonl", [SEARCH]),
        str(tmp_path / "s.parquet"),
        "search_agent",
        "stepwise",
        tokenizer_path=nano_model,
    )
    lengths = report["token_length"]
    assert 0 < lengths["p50"] <= lengths["p90"] <= lengths["max"]
    assert report["samples_per_trajectory"]["max"] == 3


def test_verl_own_dataset_reads_the_output_unchanged(tmp_path, nano_model):
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    convert(write_jsonl(tmp_path / "s.jsonl", [SEARCH]), str(tmp_path / "s.parquet"), "search_agent", "multiturn")
    config = OmegaConf.create({"pad_mode": "no_padding", "max_length": 2048, "truncation": "error"})
    dataset = MultiTurnSFTDataset(str(tmp_path / "s.parquet"), AutoTokenizer.from_pretrained(nano_model), config)
    assert len(dataset) == 1 and dataset[0]["loss_mask"].sum() > 0


@pytest.mark.parametrize("fmt, record", [("search_agent", SEARCH), ("agent_chain", CHAIN)])
def test_multiturn_trains_every_assistant_turn_and_no_observation(tmp_path, nano_model, fmt, record):
    convert(write_jsonl(tmp_path / "m.jsonl", [record]), str(tmp_path / "m.parquet"), fmt, "multiturn")
    tokenizer = AutoTokenizer.from_pretrained(nano_model)
    config = OmegaConf.create({"pad_mode": "no_padding", "max_length": 2048, "truncation": "error"})
    dataset = AgentSFTDataset(str(tmp_path / "m.parquet"), tokenizer, config)
    item = dataset[0]
    trained = tokenizer.decode(item["input_ids"][item["loss_mask"].bool()].tolist())
    expected = "".join(m["content"] + "<|im_end|>" for m in dataset.messages[0] if m["role"] == "assistant")
    assert trained == expected
    assert "<information>" not in trained
