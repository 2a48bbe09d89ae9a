"""The RL report's held-out section, from verl's validation dumps (one STEP.jsonl per
validation, a row per answer, as trainer.validation_data_dir writes them)."""

import json

import pytest

from afm_trainer.eval.scoring import pass_at_k
from afm_trainer.metrics import METRICS_FILE
from afm_trainer.recipes.grpo.report import compare_runs, read_validations, write_report


def dump(folder, step, answers, cut_short=False):
    folder.mkdir(exist_ok=True)
    lines = [
        json.dumps({"input": item, "output": "...", "score": 0.0, "step": step, "correct": c}) for item, c in answers
    ]
    if cut_short:
        lines.append(lines[0][:20])
    (folder / f"{step}.jsonl").write_text("\n".join(lines) + "\n")


def test_accuracy_standard_error_and_the_change_paired_by_item(tmp_path):
    for step in (1, 2):
        record = {"step": step, "data": {"critic/score/mean": 0.5 + step / 10}}
        with open(tmp_path / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
    dump(tmp_path / "validation", 0, [("q1", 1), ("q2", 0), ("q3", 0), ("q4", 1)], cut_short=True)
    dump(tmp_path / "validation", 20, [("q1", 1), ("q2", 1), ("q3", 0), ("q4", 1)])
    summary = write_report(str(tmp_path))
    assert summary["validation"] == {0: 0.5, 20: 0.75}
    text = (tmp_path / "report.md").read_text()
    assert "| 0 | 4 | 50.0% | 25.0% |" in text and "| 20 | 4 | 75.0% | 21.7% |" in text
    # one item of four went from wrong to right: +25 points, the spread of the per-item changes / sqrt(4)
    assert "Step 0 -> 20: +25.0% (standard error 25.0%, paired by item, 4 items)" in text


def test_sampled_validation_counts_the_fraction_of_an_items_answers(tmp_path):
    dump(tmp_path / "validation", 10, [("q1", 1), ("q1", 0), ("q2", 1), ("q2", 1)])
    (tmp_path / "validation" / "notes.txt").write_text("not a dump")
    assert read_validations(str(tmp_path)) == {10: {"q1": 0.5, "q2": 1.0}}


def test_step_time_splits_generation_into_decoding_and_the_rest(tmp_path):
    timers = {"gen": 10.0, "old_log_prob": 2.0, "ref": 1.0, "update_actor": 4.0, "step": 17.5}
    with open(tmp_path / METRICS_FILE, "w") as f:
        for step in (1, 2, 3):  # step 1 warms up and is left out
            data = {f"timing_s/{k}": v * (3 if step == 1 else 1) for k, v in timers.items()}
            f.write(json.dumps({"step": step, "data": {**data, "critic/score/mean": 0.5}}) + "\n")
    batches = [
        # the weights' step labels a batch: step 2's rollouts decode with step 1's weights
        {
            "step": 1,
            "requests": 128,
            "prompt_tokens": 1000,
            "padded_prompt_tokens": 2000,
            "new_tokens": 500,
            "seconds": 4.0,
        },
        {
            "step": 1,
            "requests": 64,
            "prompt_tokens": 3000,
            "padded_prompt_tokens": 4000,
            "new_tokens": 300,
            "seconds": 2.0,
        },
        {
            "step": 2,
            "requests": 128,
            "prompt_tokens": 1000,
            "padded_prompt_tokens": 1000,
            "new_tokens": 400,
            "seconds": 3.0,
        },
        {
            "step": 2,
            "requests": 300,
            "prompt_tokens": 9000,
            "padded_prompt_tokens": 9000,
            "new_tokens": 900,
            "seconds": 30.0,
            "greedy": True,
        },
    ]
    (tmp_path / "rollout_batches.jsonl").write_text("".join(json.dumps(b) + "\n" for b in batches))
    summary = write_report(str(tmp_path))
    assert summary["step_time"]["timers"]["gen"] == 10.0 and summary["step_time"]["timers"]["update_actor"] == 4.0
    generation = summary["step_time"]["generation"]
    # step 2: 6 s decoding in 2 batches; step 3: 3 s in 1 (the greedy validation batch is not a step's rollout)
    assert generation["decoding s"] == 4.5 and generation["rest of gen s"] == 5.5 and generation["batches"] == 1.5
    assert generation["prompt tokens re-encoded"] == 2500 and generation["padding share of prefill"] == pytest.approx(
        (1 - 4000 / 6000 + 0) / 2
    )
    assert "## Step time (median of steps 2-3, seconds)" in (tmp_path / "report.md").read_text()


def fake_run(folder, rewards, correct_first, correct_last, critic=False):
    folder.mkdir()
    with open(folder / METRICS_FILE, "w") as f:
        for step, reward in enumerate(rewards, 1):
            data = {"critic/score/mean": reward, "timing_s/step": 10.0 + step}
            if critic:
                data["critic/vf_loss"] = 0.1
            f.write(json.dumps({"step": step, "data": data}) + "\n")
    dump(folder / "validation", 0, [(f"q{i}", c) for i, c in enumerate(correct_first)])
    dump(folder / "validation", len(rewards), [(f"q{i}", c) for i, c in enumerate(correct_last)])


def test_runs_compared_in_one_table_with_each_algorithm_named(tmp_path):
    fake_run(tmp_path / "seed0", [0.1] * 5 + [0.5] * 5, [0, 0, 1, 1], [1, 1, 1, 1])
    fake_run(tmp_path / "ppo", [0.2] * 10, [0, 0, 1, 1], [0, 0, 1, 1], critic=True)
    compare_runs([str(tmp_path / "seed0"), str(tmp_path / "ppo")], str(tmp_path / "cmp"))
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    # median step time leaves out step 1: steps 2-10 take 12..20 s
    assert "| seed0 | GRPO | 10 | 0.100 | 0.500 | 50.0% | 100.0% | +50.0% (28.9%) | 16.0 |" in table
    assert "| ppo | PPO | 10 | 0.200 | 0.200 | 50.0% | 50.0% | +0.0% (0.0%) | 16.0 |" in table
    assert (tmp_path / "cmp" / "reward_curves.png").stat().st_size > 0


def test_a_folder_that_is_not_a_run_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no training steps"):
        compare_runs([str(tmp_path)], str(tmp_path / "cmp"))


def test_pass_at_k_is_the_unbiased_estimator():
    # 4 answers, 1 right: pass@1 = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1/2; pass@4 = 1
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 4) == 1.0 and pass_at_k(4, 0, 4) == 0.0
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 8)


def test_a_validation_only_run_with_sampled_answers_reports_pass_at_k_paired_by_item(tmp_path):
    # validation-only runs (trainer.val_only=true, val_kwargs.n=4): no training step in the metrics
    dump(
        tmp_path / "validation",
        0,
        [("q1", 1), ("q1", 0), ("q1", 0), ("q1", 0), ("q2", 0), ("q2", 0), ("q2", 0), ("q2", 0)],
    )
    dump(
        tmp_path / "validation",
        20,
        [("q1", 1), ("q1", 1), ("q1", 0), ("q1", 0), ("q2", 1), ("q2", 0), ("q2", 0), ("q2", 0)],
    )
    summary = write_report(str(tmp_path))
    # step 0: q1 1 of 4, q2 0 of 4; step 20: q1 2 of 4, q2 1 of 4
    assert summary["pass_at_k"][0] == pytest.approx({1: 0.125, 2: 0.25, 4: 0.5})
    assert summary["pass_at_k"][20] == pytest.approx({1: 0.375, 2: (5 / 6 + 0.5) / 2, 4: 1.0})
    text = (tmp_path / "report.md").read_text()
    assert "mean reward" not in text and "(verl's validation, sampled, mean over each item's answers)" in text
    assert "| 0 | 2 | 4 | 12.5% (12.5%) | 25.0% (25.0%) | 50.0% (50.0%) |" in text
    # the standard error of a sampled accuracy is the spread of the items' fractions, not binomial (23.4%)
    assert "| 0 | 2 | 12.5% | 12.5% |" in text
    # pass@4: q1 stays at 1, q2 goes 0 -> 1: +50 points, standard error 50 (two items)
    assert "Step 0 -> 20, paired by item: pass@1 +25.0% (0.0%), pass@2 +41.7% (8.3%), pass@4 +50.0% (50.0%)" in text
