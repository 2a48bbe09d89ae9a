"""recipes/train_sft.sh end to end on CPU: verl's SFT trainer, FSDP2, gloo ranks."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from afm_trainer.checkpoints import latest_complete, tracked_step
from afm_trainer.eval.lm import assistant_loss
from afm_trainer.metrics import read_metrics
from tests.conftest import REPO, kill_at_first_checkpoint, run_recipe

pytestmark = pytest.mark.e2e  # every test here trains with torchrun

# 192 rows / batch 16 = 12 steps; a checkpoint every 4.
COMMON = ["optim.lr=1e-3", "trainer.total_epochs=1", "trainer.save_freq=4", "optim.lr_warmup_steps_ratio=0.1"]


def data_args(starter_data, model):
    train, val = starter_data
    return [f"MODEL={model}", f"TRAIN_FILES={train}", f"VAL_FILES={val}"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, nano_model, starter_data):
    """An uninterrupted 2-rank run: the reference for the other tests."""
    out = tmp_path_factory.mktemp("sft") / "full"
    tensorboard = "trainer.logger=[console,file,tensorboard]"
    result = run_recipe(2, out, *data_args(starter_data, nano_model), *COMMON, tensorboard)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


def test_two_ranks_train_and_loss_falls(full_run):
    out, result = full_run
    assert "--nproc_per_node=2" in result.stdout
    metrics = read_metrics(str(out))
    assert sorted(metrics) == list(range(1, 13))
    losses = [metrics[s]["train/loss"] for s in sorted(metrics)]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    assert "val/loss" in metrics[12]


def test_tensorboard_events_are_written_to_out_dir(full_run):
    """verl's loggers with one override; tensorboard's events in OUT_DIR/tensorboard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = full_run
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    metrics = read_metrics(str(out))
    assert sorted(logged) == list(range(1, 13))
    assert all(logged[s] == pytest.approx(metrics[s]["train/loss"], rel=1e-6) for s in logged)


def test_checkpoints_are_complete_and_hf_export_reloads_and_generates(full_run, starter_data, nano_model):
    out, _ = full_run
    assert tracked_step(str(out)) == 12
    assert latest_complete(str(out)) == str(out / "global_step_12")
    for step in (4, 8, 12):
        assert (out / f"global_step_{step}" / "huggingface" / "model.safetensors").exists()

    export = out / "global_step_12" / "huggingface"
    # Loadable by plain transformers, in a process that never imported afm_trainer.
    code = (
        "from transformers import AutoModelForCausalLM as M; "
        f"print(M.from_pretrained({str(export)!r}).config.model_type)"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert loaded.returncode == 0 and loaded.stdout.strip().endswith("qwen2"), loaded.stderr[-2000:]
    tokenizer = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export)
    assert tokenizer.convert_tokens_to_ids("<answer>") == AutoTokenizer.from_pretrained(
        nano_model
    ).convert_tokens_to_ids("<answer>")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 1 + 2?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]

    # The export is the trained model: it scores the validation answers better than the start.
    val = [[dict(m) for m in msgs] for msgs in pd.read_parquet(starter_data[1])["messages"]]
    start = AutoModelForCausalLM.from_pretrained(nano_model)
    assert assistant_loss(model, tokenizer, val) < assistant_loss(start, tokenizer, val) - 0.3


def test_resume_after_kill_continues_step_count_and_lr_schedule(tmp_path, full_run, nano_model, starter_data):
    reference = read_metrics(str(full_run[0]))
    out = tmp_path / "killed"
    recipe = ["bash", os.path.join(REPO, "recipes", "train_sft.sh"), "2", str(out)]
    kill_at_first_checkpoint(recipe + data_args(starter_data, nano_model) + COMMON)
    killed_at = tracked_step(str(out))
    assert killed_at is not None and killed_at < 12, f"run was not interrupted mid-way (tracker: {killed_at})"

    result = run_recipe(2, out, *data_args(starter_data, nano_model), *COMMON)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert tracked_step(str(out)) == 12
    with open(out / "metrics.jsonl") as f:  # the resumed run's own log
        first_resumed = int(f.readline().split('"step":')[1].split(",")[0])
    assert first_resumed == killed_at + 1
    resumed = read_metrics(str(out))
    for step in range(killed_at + 1, 13):
        # Same schedule position and same data order as the uninterrupted run.
        assert resumed[step]["train/lr"] == pytest.approx(reference[step]["train/lr"], rel=1e-6)
        assert resumed[step]["train/loss"] == pytest.approx(reference[step]["train/loss"], abs=0.05)


def test_lora_run_exports_a_merged_loadable_model(tmp_path, nano_model, starter_data):
    out = tmp_path / "lora"
    result = run_recipe(
        1,
        out,
        *data_args(starter_data, nano_model),
        "optim.lr=3e-3",
        "trainer.total_training_steps=8",
        "model.lora_rank=8",
        "model.lora_alpha=16",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "merged LoRA adapter" in result.stdout
    export = out / "global_step_8" / "huggingface"
    model = AutoModelForCausalLM.from_pretrained(export)
    start = AutoModelForCausalLM.from_pretrained(nano_model)
    names = dict(model.named_parameters())
    assert not any("lora" in n for n in names)
    # Only what LoRA targets moved; embeddings and norms are the base model's.
    base = dict(start.named_parameters())
    assert torch.equal(names["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert not torch.equal(names["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    tokenizer = AutoTokenizer.from_pretrained(export)
    val = [[dict(m) for m in msgs] for msgs in pd.read_parquet(starter_data[1])["messages"]]
    assert assistant_loss(model, tokenizer, val) < assistant_loss(start, tokenizer, val)


def test_curriculum_trains_in_the_written_order_and_resumes_in_place(tmp_path, nano_model, starter_data):
    """Easy (short) first, in 3 stages: every step's trained tokens, as verl counts them,
    are the tokens of the rows data_order.jsonl lists for it, before and after a kill."""
    out = tmp_path / "curriculum"
    args = [*data_args(starter_data, nano_model), *COMMON, "data.curriculum.key=length"]
    recipe = ["bash", os.path.join(REPO, "recipes", "train_sft.sh"), "2", str(out)]
    kill_at_first_checkpoint(recipe + args)
    killed_at = tracked_step(str(out))
    assert killed_at is not None and killed_at < 12, f"run was not interrupted mid-way (tracker: {killed_at})"
    result = run_recipe(2, out, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    with open(out / "data_order.jsonl") as f:
        order = [json.loads(line) for line in f]
    assert [o["step"] for o in order] == list(range(1, 13))
    lengths = [k for o in order for k in o["length"]]
    stages = [lengths[len(lengths) * s // 3 : len(lengths) * (s + 1) // 3] for s in range(3)]
    assert max(stages[0]) <= min(stages[1]) and max(stages[1]) <= min(stages[2])
    assert len({r for o in order for r in o["rows"]}) == 192  # one epoch: every row once
    metrics = read_metrics(str(out))  # the resumed run's steps overwrite the killed run's
    assert sorted(metrics) == list(range(1, 13))
    assert [metrics[s]["train/global_tokens"] for s in range(1, 13)] == [sum(o["length"]) for o in order]
