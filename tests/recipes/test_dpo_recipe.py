"""recipes/train_dpo.sh end to end on CPU: preference training on verl's SFT engine."""

import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from afm_trainer.checkpoints import tracked_step
from afm_trainer.data.pairs import PAIR_SCHEMA
from afm_trainer.metrics import read_metrics
from afm_trainer.recipes.dpo.reference import mismatch, model_identity
from tests.conftest import REPO, kill_at_first_checkpoint, run_recipe

DPO = os.path.join(REPO, "recipes", "train_dpo.sh")


def run_dpo(*args):
    return run_recipe(*args, recipe="train_dpo")


def write_pairs(path, n=32, seed=0, long_chosen=True):
    """Learnable pairs: the chosen answer is always "yes", the rejected one "no"; prompts
    and (optionally) the chosen responses vary in length from a few tokens to ~150."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(rng.randint(1, 60)))
        tail = " ok" * rng.randint(0, 40) if long_chosen else ""
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"Question {i}: {words}"}],
                "chosen": [{"role": "assistant", "content": f"<answer>yes</answer>{tail}"}],
                "rejected": [{"role": "assistant", "content": "<answer>no</answer>"}],
                "pair_id": f"p{i}",
                "source": "test",
                "weight": 1.0,
            }
        )
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA), path)
    return str(path)


@pytest.mark.e2e
def test_step_losses_with_the_reference_equal_to_the_policy(tmp_path, nano_model):
    """lr 0 keeps policy == reference: every margin is 0, so each loss has its closed form.
    Two gloo ranks and dynamic batching over pairs of very different lengths: a pair split
    across micro-batches or ranks, or a reference computed differently, would show."""
    pairs = write_pairs(tmp_path / "pairs.parquet")
    schedule = "[{from_step:1,loss_type:sigmoid},{from_step:2,loss_type:ipo},{from_step:3,loss_type:cal_dpo}]"
    out = tmp_path / "out"
    result = run_dpo(
        2,
        out,
        f"MODEL={nano_model}",
        f"TRAIN_FILES={pairs}",
        "optim.lr=0",
        "trainer.total_training_steps=3",
        "data.use_dynamic_bsz=true",
        "data.max_token_len_per_gpu=400",
        f"dpo.schedule={schedule}",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = read_metrics(str(out))
    ln2, ipo = 0.6931471805599453, (1 / (2 * 0.1)) ** 2
    assert metrics[1]["train/loss"] == pytest.approx(ln2, abs=1e-4)
    assert metrics[2]["train/loss"] == pytest.approx(ipo, abs=1e-4)
    assert metrics[3]["train/loss"] == pytest.approx(ln2 + ipo, abs=1e-4)  # Cal-DPO: both targets 1/(2 beta) away
    assert [metrics[s]["dpo/loss_type_id"] for s in (1, 2, 3)] == [0.0, 1.0, 2.0]
    assert metrics[1]["dpo/pairs_per_micro_batch"] < 4  # each rank's 4 pairs went through several micro-batches
    for step in (1, 2, 3):
        assert metrics[step]["dpo/logratio/chosen"] == pytest.approx(0, abs=1e-4)
    reference = pq.read_table(out / "reference" / "train.parquet")
    assert reference.num_rows == 32 and b"afm_reference" in reference.schema.metadata


SCHEDULE = "[{from_epoch:2,beta:0.2},{from_epoch:3,loss_type:dr_dpo}]"
# 32 pairs / 8 a step = 4 steps an epoch; 3 epochs; a checkpoint every 4 steps.
LEARN = [
    "optim.lr=3e-4",
    "trainer.total_epochs=3",
    "trainer.save_freq=4",
    f"dpo.schedule={SCHEDULE}",
]


@pytest.fixture(scope="module")
def learning_run(tmp_path_factory, nano_model):
    folder = tmp_path_factory.mktemp("dpo")
    pairs = write_pairs(folder / "pairs.parquet", long_chosen=False)
    out = folder / "full"
    result = run_dpo(1, out, f"MODEL={nano_model}", f"TRAIN_FILES={pairs}", *LEARN)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, pairs


@pytest.mark.e2e
def test_learnable_pairs_raise_reward_accuracy_and_margin(learning_run):
    out, _ = learning_run
    metrics = read_metrics(str(out))
    assert sorted(metrics) == list(range(1, 13))
    first, last = metrics[1], metrics[12]
    assert first["dpo/rewards/accuracy"] == 0 and first["dpo/rewards/margin"] == pytest.approx(0, abs=1e-4)
    margins = [metrics[s]["dpo/rewards/margin"] for s in range(3, 13)]  # steps 1-2: warm-up from lr 0
    assert last["dpo/rewards/accuracy"] >= 0.9 and margins == sorted(margins) and margins[-1] > 0.5, margins
    # the schedule, as logged: beta 0.1 then 0.2 from epoch 2, dr_dpo from epoch 3
    assert [metrics[s]["dpo/beta"] for s in (4, 5, 12)] == [0.1, 0.2, 0.2]
    assert [metrics[s]["dpo/loss_type_id"] for s in (8, 9)] == [0.0, 3.0]
    assert tracked_step(str(out)) == 12 and (out / "global_step_12" / "huggingface" / "config.json").is_file()


@pytest.mark.e2e
def test_a_run_killed_mid_schedule_resumes_where_it_stopped(tmp_path, learning_run, nano_model):
    full, pairs = learning_run
    reference = read_metrics(str(full))
    out = tmp_path / "killed"
    kill_at_first_checkpoint(["bash", DPO, "1", str(out), f"MODEL={nano_model}", f"TRAIN_FILES={pairs}", *LEARN])
    killed_at = tracked_step(str(out))
    assert killed_at is not None and killed_at < 12, f"run was not interrupted mid-way (tracker: {killed_at})"

    result = run_dpo(1, out, f"MODEL={nano_model}", f"TRAIN_FILES={pairs}", *LEARN)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    resumed = read_metrics(str(out))
    for step in range(killed_at + 1, 13):
        for key in ("dpo/beta", "dpo/loss_type_id", "train/epoch", "train/lr"):
            assert resumed[step][key] == pytest.approx(reference[step][key], rel=1e-6), (step, key)
        # the same pairs in the same order against the same reference
        assert resumed[step]["dpo/logps/rejected"] == pytest.approx(reference[step]["dpo/logps/rejected"], rel=0.05)


def test_pairs_too_long_or_without_columns_are_refused_in_one_line(tmp_path, nano_model):
    pairs = write_pairs(tmp_path / "pairs.parquet")
    too_long = run_dpo(1, tmp_path / "o", f"MODEL={nano_model}", f"TRAIN_FILES={pairs}", "data.max_length=64")
    assert too_long.returncode == 2 and too_long.stderr.count("\n") == 1
    assert "pairs exceed data.max_length=64" in too_long.stderr and "p" in too_long.stderr
    pq.write_table(pa.table({"prompt": ["x"], "chosen": ["y"]}), tmp_path / "bad.parquet")
    missing = run_dpo(1, tmp_path / "o", f"MODEL={nano_model}", f"TRAIN_FILES={tmp_path / 'bad.parquet'}")
    assert missing.returncode == 2 and "has no `rejected` column" in missing.stderr
    assert not (tmp_path / "o").exists()


def test_reference_log_probs_of_another_model_are_refused(tmp_path, learning_run):
    import shutil

    full, pairs = learning_run
    out = tmp_path / "o"
    shutil.copytree(full / "reference", out / "reference")  # made from the nano model
    trained = full / "global_step_4" / "huggingface"
    result = run_dpo(1, out, f"MODEL={trained}", f"TRAIN_FILES={pairs}", "trainer.total_training_steps=1")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert "holds reference log-probs of another model than this run's" in result.stderr
    assert not (out / "global_step_1").exists()


def test_a_reference_file_belongs_to_one_model_wherever_it_lies_and_to_one_pair_list(tmp_path, nano_model):
    import shutil

    stored = {**model_identity(nano_model), "pair_ids": ["a", "b"]}
    moved = shutil.copytree(nano_model, tmp_path / "moved")
    assert mismatch("f", stored, {**model_identity(str(moved)), "pair_ids": ["a", "b"]}) is None
    assert "another list of pairs" in mismatch("f", stored, {**model_identity(nano_model), "pair_ids": ["b", "a"]})
    assert "another model" in mismatch("f", {"model": "org/a"}, {"model": "org/b"})


@pytest.mark.e2e
def test_lora_with_a_live_reference_learns_and_exports_a_merged_model(tmp_path, nano_model):
    from transformers import AutoModelForCausalLM

    pairs = write_pairs(tmp_path / "pairs.parquet", long_chosen=False)
    out = tmp_path / "lora"
    lora = ["model.lora_rank=8", "model.lora_alpha=16", "dpo.reference=live"]
    result = run_dpo(1, out, f"MODEL={nano_model}", f"TRAIN_FILES={pairs}", "optim.lr=1e-3", *lora)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = read_metrics(str(out))
    assert metrics[1]["train/loss"] == pytest.approx(0.6931, abs=1e-4)  # adapter off == adapter at zero
    margins = [metrics[s]["dpo/rewards/margin"] for s in (1, 2, 3, 4)]
    assert metrics[4]["dpo/rewards/accuracy"] == 1.0 and margins == sorted(margins) and margins[-1] > 0.02, margins
    assert not (out / "reference").exists()  # nothing precomputed
    AutoModelForCausalLM.from_pretrained(out / "global_step_4" / "huggingface")  # merged: plain transformers loads it
    assert (out / "report.md").is_file() and (out / "reward_curves.png").is_file()


def test_dry_run_prints_the_command_and_the_demo_needs_the_sft_demo_only_to_run(tmp_path, nano_model):
    pairs = write_pairs(tmp_path / "pairs.parquet")
    result = run_dpo(2, tmp_path / "o", f"MODEL={nano_model}", f"TRAIN_FILES={pairs}", "DRY_RUN=1", "dpo.beta=0.2")
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("[dpo] command: ")]
    for part in ("--nproc_per_node=2", "-m afm_trainer.recipes.dpo.trainer", "--config-name=dpo", "dpo.beta=0.2"):
        assert part in line, part
    assert not (tmp_path / "o").exists()
    # node 1 of 2 nodes, 8 GPUs each: the same torchrun line the SFT recipe's multi-node runs use
    nodes = ["NNODES=2", "NODE_RANK=1", "MASTER_ADDR=10.0.0.1", "MASTER_PORT=29500", "DRY_RUN=1"]
    second = run_dpo(8, tmp_path / "o", f"MODEL={nano_model}", f"TRAIN_FILES={pairs}", *nodes)
    assert second.returncode == 0, second.stderr
    assert "--nproc_per_node=8 --nnodes=2 --node_rank=1 --master_addr=10.0.0.1 --master_port=29500" in second.stdout
    assert "trainer.nnodes=2" in second.stdout
    demo = run_dpo(1, tmp_path / "d", f"SFT_DIR={tmp_path / 'none'}")
    assert demo.returncode == 2 and "(run `make demo` first, or pass MODEL=... / SFT_DIR=...)" in demo.stderr
    assert not (tmp_path / "d").exists()
    # A preview needs no earlier run: it shows the path the run after `make demo` takes.
    preview = run_dpo(1, tmp_path / "d", f"SFT_DIR={tmp_path / 'none'}", "DRY_RUN=1")
    assert preview.returncode == 0, preview.stderr
    placeholder = tmp_path / "none" / "phase3_summary_prefix" / "global_step_LATEST" / "huggingface"
    assert f"model.path={placeholder}" in preview.stdout
    assert f"data.train_files={tmp_path / 'd' / 'data' / 'pairs.parquet'}" in preview.stdout
    assert not (tmp_path / "d").exists()
