"""On-policy pairs: sampled answers scored by the suite's reward, right paired with wrong,
every prompt accounted for."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch

from afm_trainer.data.onpolicy_pairs import make_onpolicy_pairs, sample_answers
from afm_trainer.data.pairs import PAIR_SCHEMA, convert_pairs
from afm_trainer.data.parquet_io import InputError
from afm_trainer.data.rl_data import make_rl_data
from afm_trainer.models.special_tokens import reserved_token_in
from afm_trainer.suites import SUITES, RLDataRequest, Suite, register, rl_row
from tests.conftest import REPO

# A toy suite whose credit depends on the sampled text only, so an untrained model gets
# about half of its answers right: "right" when the answer has an even number of characters.
EVEN = Suite(
    name="even",
    description="Answer with an even number of characters.",
    data_source="afm/even",
    agent="single_turn_agent",
    heldout_file="even.jsonl",
    group_key="type",
    max_new_tokens=6,
    easy_tiers=("1",),
    rl_rows=lambda request: ([rl_row(EVEN, f"Say something {i}", "", id=f"q{i}") for i in range(12)], []),
    extract=lambda text: text,
    credit=lambda answer, ground_truth, extra_info: float(len(answer) % 2 == 0),
    evaluate=lambda run, items: [],
    training_answers=lambda world: {},
)


def sample_answers_of(checkpoint, rl_file, k, seed):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    prompts = [row["prompt"] for row in pq.read_table(rl_file).to_pylist()]
    return sample_answers(model, tokenizer, prompts, k, 1.0, EVEN.max_new_tokens, seed)


@pytest.fixture
def even_rl_data(tmp_path):
    register(EVEN)
    make_rl_data(["even"], RLDataRequest(str(tmp_path / "rl")))
    yield str(tmp_path / "rl" / "train.parquet")
    SUITES.pop("even")


def test_right_answers_are_paired_with_wrong_ones_and_every_prompt_counted(tmp_path, nano_model, even_rl_data):
    out = str(tmp_path / "pairs.parquet")
    report = make_onpolicy_pairs(nano_model, even_rl_data, out, samples=4, pairs_per_prompt=2, seed=1)
    outcomes = report["prompts_by_outcome"]
    assert report["prompts"] == 12 == sum(outcomes.values()) and outcomes["paired"] > 0
    rejects = [json.loads(line) for line in open(out + ".rejects.jsonl")]
    assert len(rejects) == 12 - outcomes["paired"]
    assert all(r["reason"].startswith(("all right", "all wrong")) for r in rejects)
    table = pq.read_table(out)
    assert table.schema.equals(PAIR_SCHEMA) and table.num_rows == report["pairs"] <= 2 * outcomes["paired"]
    for pair in table.to_pylist():
        assert len(pair["chosen"][0]["content"]) % 2 == 0 and len(pair["rejected"][0]["content"]) % 2 == 1
        assert pair["prompt"][0]["role"] == "user" and pair["source"].startswith("on-policy")
    # every distinct wrong answer of a prompt is a pair (up to pairs_per_prompt), even when
    # the prompt has a single right answer
    # (an answer holding a reserved chat token takes no part: pair text never trains as one)
    answers = sample_answers_of(nano_model, even_rl_data, k=4, seed=1)
    usable = [[a for a in group if not reserved_token_in(a)] for group in answers]
    expected = sum(
        min(2, len({a for a in group if len(a) % 2})) for group in usable if any(len(a) % 2 == 0 for a in group)
    )
    assert report["pairs"] == expected > outcomes["paired"]
    assert report["answers_with_reserved_token"] == sum(len(g) - len(u) for g, u in zip(answers, usable))
    # the same checkpoint, data and seed give the same pairs
    again = make_onpolicy_pairs(nano_model, even_rl_data, str(tmp_path / "again.parquet"), samples=4, seed=1)
    assert pq.read_table(tmp_path / "again.parquet").equals(table)
    assert again["sampled_accuracy"] == report["sampled_accuracy"]
    # and the pair file passes the pair format's own rules
    assert convert_pairs(out, str(tmp_path / "checked.parquet"))["records_rejected"] == 0


def test_no_pair_possible_is_one_error_line(tmp_path, nano_model, even_rl_data):
    with pytest.raises(InputError, match="--samples must be 2 or more"):
        make_onpolicy_pairs(nano_model, even_rl_data, str(tmp_path / "p.parquet"), samples=1)
    script = os.path.join(REPO, "data_preprocess", "make_pairs.py")
    result = subprocess.run(
        [sys.executable, script, "--from_checkpoint", nano_model, "--output_file", str(tmp_path / "p.parquet")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and result.stderr.strip() == (
        "error: --from_checkpoint needs --rl_data (an RL parquet from make_rl_data.py)"
    )
