"""Seed 001's distillation: the divergences checked against direct computations on
hand-made distributions, the loss as verl's engine calls it, the teacher data's
alignment with the tokens, and a run on 2 gloo ranks."""

import json
import math

import pandas as pd
import pytest
import torch

from afm_trainer.data.distill_dataset import DistillSFTDataset, add_teacher_topk, dataset_config
from afm_trainer.recipes.distill.losses import student_topk_log_probs, token_divergence
from afm_trainer.recipes.distill.trainer import distill_loss
from tests.conftest import run_recipe

TEACHER = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])  # a teacher distribution over 5 tokens
STUDENT_LOGITS = torch.tensor([0.3, -1.0, 0.8, 0.0, 0.5])


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def buckets(probs, ids):
    """The distribution on the given ids plus "any other token"."""
    top = [float(probs[i]) for i in ids]
    return [*top, 1 - sum(top)]


def test_forward_reverse_and_jsd_on_top_k_plus_the_rest_match_a_direct_computation():
    ids = torch.tensor([0, 1, 2])  # the teacher's top 3
    q = torch.softmax(STUDENT_LOGITS, -1)
    student = student_topk_log_probs(STUDENT_LOGITS, ids, temperature=1.0)
    teacher = TEACHER[ids].log()
    p3, q3 = buckets(TEACHER, ids), buckets(q, ids)
    assert token_divergence(student, teacher, "forward_kl").item() == pytest.approx(kl(p3, q3), abs=1e-6)
    assert token_divergence(student, teacher, "reverse_kl").item() == pytest.approx(kl(q3, p3), abs=1e-6)
    m = [0.3 * a + 0.7 * b for a, b in zip(p3, q3)]  # TRL's mixture: jsd_beta on the teacher
    expected = 0.3 * kl(p3, m) + 0.7 * kl(q3, m)
    assert token_divergence(student, teacher, "jsd", jsd_beta=0.3).item() == pytest.approx(expected, abs=1e-6)


def test_with_every_token_in_the_top_k_it_is_the_full_kl_and_zero_for_equal_distributions():
    ids = torch.arange(5)
    q = torch.softmax(STUDENT_LOGITS, -1)
    full = token_divergence(student_topk_log_probs(STUDENT_LOGITS, ids, 1.0), TEACHER.log())
    assert full.item() == pytest.approx(kl(TEACHER.tolist(), q.tolist()), abs=1e-5)
    same = token_divergence(TEACHER[:3].log(), TEACHER[:3].log(), "jsd")
    assert same.item() == pytest.approx(0.0, abs=1e-7)


def test_the_student_temperature_divides_its_logits():
    ids = torch.tensor([2, 4])
    expected = torch.log_softmax(STUDENT_LOGITS / 2.0, -1)[ids]
    assert torch.allclose(student_topk_log_probs(STUDENT_LOGITS, ids, 2.0), expected)


def test_the_loss_combines_ce_and_divergence_on_the_trained_tokens_as_verl_normalises():
    settings = {"alpha": 0.7, "beta": 0.3, "divergence": "forward_kl", "jsd_beta": 0.5, "temperature": 1.0}
    nested = lambda rows: torch.nested.as_nested_tensor([torch.tensor(r) for r in rows], layout=torch.jagged)  # noqa: E731
    # two samples of 3 and 2 tokens; the mask marks the predicted tokens, shifted left by one
    data = {
        "loss_mask": nested([[0, 1, 1], [0, 1]]),
        "dp_size": 2,
        "batch_num_tokens": 10,
    }
    output = {
        "log_probs": nested([[-1.0, -2.0, -9.0], [-3.0, -9.0]]),
        "distill_divergence": nested([[0.5, 0.25, 9.0], [1.0, 9.0]]),
    }
    loss, metrics = distill_loss(output, data, settings=settings)
    ce, div = 1.0 + 2.0 + 3.0, 0.5 + 0.25 + 1.0  # positions 0, 1 of the first sample, 0 of the second
    assert loss.item() == pytest.approx((0.7 * ce + 0.3 * div) * 2 / 10)
    assert metrics == {"sum/ce": ce, "sum/divergence": div, "sum/tokens": 3.0}

    # as verl's logits processor: one divergence per packed token
    logits = torch.randn(1, 5, 7)
    teacher_ids = nested([[[1, 2]] * 3, [[0, 6]] * 2])
    teacher_logp = nested([[[-0.5, -1.5]] * 3, [[-0.1, -3.0]] * 2])
    out = distill_loss(
        data={"teacher_topk_ids": teacher_ids, "teacher_topk_log_probs": teacher_logp},
        student_logits=logits,
        settings=settings,
    )["distill_divergence"]
    assert out.shape == (1, 5)
    direct = token_divergence(torch.log_softmax(logits[0, 4], -1)[[0, 6]], torch.tensor([-0.1, -3.0]))
    assert out[0, 4].item() == pytest.approx(direct.item(), abs=1e-6)


@pytest.fixture(scope="module")
def teacher_data(tmp_path_factory, nano_model, starter_data):
    folder = tmp_path_factory.mktemp("distill")
    train, val = starter_data
    out = {}
    for name, path in (("train", train), ("val", val)):
        out[name] = str(folder / f"{name}.parquet")
        add_teacher_topk(path, out[name], nano_model, k=4)
    return out


def test_teacher_data_is_stored_per_token_and_refused_for_other_tokens(teacher_data, nano_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(nano_model)
    rows = pd.read_parquet(teacher_data["val"])
    assert set(rows["teacher_k"]) == {4} and rows["teacher"].iloc[0].startswith(nano_model)
    dataset = DistillSFTDataset(teacher_data["val"], tokenizer, {**dataset_config(2048), "distill_temperature": 1.0})
    item = dataset[0]
    assert item["teacher_topk_ids"].shape == (len(item["input_ids"]), 4)
    assert torch.all(item["teacher_topk_log_probs"][:, :-1] >= item["teacher_topk_log_probs"][:, 1:])
    shorter = DistillSFTDataset(teacher_data["val"], tokenizer, {**dataset_config(16), "distill_temperature": 1.0})
    with pytest.raises(ValueError, match="data row 0: the teacher's top-k was computed on other tokens"):
        shorter[0]
    hotter = DistillSFTDataset(teacher_data["val"], tokenizer, {**dataset_config(2048), "distill_temperature": 2.0})
    with pytest.raises(ValueError, match="temperature 1.0, the trainer's distill.temperature is 2.0"):
        hotter[0]


def test_a_missing_teacher_or_input_is_one_error_line(tmp_path, starter_data):
    import subprocess
    import sys

    from tests.conftest import REPO

    for args, message in (
        (["--input_file", starter_data[1], "--teacher", str(tmp_path / "nope")], "is not a Hugging Face model folder"),
        (["--input_file", str(tmp_path / "none.parquet"), "--teacher", str(tmp_path)], "input file not found"),
    ):
        result = subprocess.run(
            [
                sys.executable,
                f"{REPO}/data_preprocess/add_teacher_topk.py",
                "--output_file",
                str(tmp_path / "o.parquet"),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and message in result.stderr


@pytest.mark.e2e
def test_distillation_trains_on_two_gloo_ranks_with_the_teacher_aligned_to_the_tokens(
    tmp_path, teacher_data, nano_model
):
    result = run_recipe(
        2,
        tmp_path / "out",
        f"MODEL={nano_model}",
        f"TRAIN_FILES={teacher_data['train']}",
        f"VAL_FILES={teacher_data['val']}",
        "trainer.total_training_steps=3",
        "data.train_batch_size=8",
        "distill.alpha=0.6",
        "distill.beta=0.4",
        recipe="train_distill",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line)["data"] for line in open(tmp_path / "out" / "metrics.jsonl")]
    train = [m for m in lines if "train/loss" in m]
    assert len(train) == 3
    # the teacher is the start model: before the first update the two agree on every
    # token, which holds only if each stored top-k lines up with the token it predicts
    assert abs(train[0]["distill/divergence"]) < 1e-6 and train[0]["distill/ce"] > 1.0
    for m in train:
        assert m["train/loss"] == pytest.approx(0.6 * m["distill/ce"] + 0.4 * m["distill/divergence"], rel=1e-4)
    assert any("val/loss" in m for m in lines)
