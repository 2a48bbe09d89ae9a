"""scripts/smoke_real_shape.py (make smoke-real-shape), checked without its 20-minute run:
its memory watcher reads a process's real peak and what the process was doing then, and
at Qwen2.5-0.5B's width and vocabulary (one layer) the model and data stages run, after
which every training recipe accepts its stage's command and the plan is made beside it."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.examples.test_examples import RECIPE_KEYS, load_script

SMOKE = os.path.join(REPO, "scripts", "smoke_real_shape.py")
TRAINING_STAGES = ["sft", "chain", "dpo", "distill", "grpo"]


def test_the_watcher_reads_a_processs_peak_and_the_log_line_before_it(tmp_path):
    smoke = load_script("smoke_real_shape")
    log_path = tmp_path / "stage.log"
    program = (
        "import time\n"
        "print('loading', flush=True)\n"
        "time.sleep(1.5)\n"
        "print('allocating 400 MB', flush=True)\n"
        "block = b'x' * (400 << 20)\n"  # written, so every page is resident
        "time.sleep(1.5)\n"
        "del block\n"
        "print('done', flush=True)\n"
        "time.sleep(1.5)\n"
    )
    with open(log_path, "w") as log:
        child = subprocess.Popen(["bash", "-c", f'{sys.executable} -c "{program}"'], stdout=log)
        watcher = smoke.Watcher(child.pid, None, str(log_path))
        child.wait()
        watcher.stop()
    (peak, name), *_ = sorted(watcher.peaks.values(), reverse=True)
    assert 0.39 < peak / smoke.GIB < 0.5 and name.startswith(sys.executable)  # python's, not bash's
    assert smoke.last_line_before(str(log_path), watcher.peak_log_offset) == "allocating 400 MB"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The smoke's model and data stages at one layer, as a user runs them."""
    out = tmp_path_factory.mktemp("smoke") / "out"
    env = {k: v for k, v in os.environ.items() if k not in RECIPE_KEYS}
    result = subprocess.run(
        [sys.executable, SMOKE, str(out), "--layers", "1", "--stages", "model,data"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, env


def test_model_and_data_stages_write_what_the_recipes_train_on(built):
    out, _ = built
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["stage"], r["status"]) for r in summary["stages"]] == [("model", "ok"), ("data", "ok")]
    assert "qwen2.5-0.5b, 1 layers, vocabulary 151936" in summary["header"]
    from transformers import AutoTokenizer

    roles = AutoTokenizer.from_pretrained(out / "model_roles")
    assert all(
        len(roles.encode(t, add_special_tokens=False)) == 1 for t in ["<|planner|>", "<|coder|>", "<|reviewer|>"]
    )
    import pyarrow.parquet as pq

    rows = {p: pq.read_metadata(out / "data" / p).num_rows for p in ["long/train.parquet", "long/pairs.parquet"]}
    rows["distill/train.parquet"] = pq.read_metadata(out / "data" / "distill/train.parquet").num_rows
    assert rows == {"long/train.parquet": 16, "long/pairs.parquet": 16, "distill/train.parquet": 16}
    assert "teacher_topk_ids" in pq.read_schema(out / "data" / "distill/train.parquet").names
    rl = pq.read_table(out / "data" / "rl/train.parquet").to_pandas()
    assert set(rl["data_source"]) == {"afm/qa"} and len(rl) == 8  # the search tool's prompts


def test_a_dry_run_checks_every_recipes_command_and_plans_its_memory(built):
    out, env = built
    result = subprocess.run(
        [sys.executable, SMOKE, str(out), "--layers", "1", "--dry_run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|") for line in result.stdout.splitlines() if line.startswith("| ")}
    for stage in TRAINING_STAGES:
        assert rows[stage][2].strip() == "accepted", rows[stage]
        assert float(rows[stage][6]) > 1.0  # GiB per rank: the 151,936-row embedding alone is 0.5 GiB in fp32
    assert rows["eval"][2].strip() == "printed" and rows["model"][2].strip() == "printed"
    for tag in ["[sft] command:", "[dpo] command:", "[distill] command:", "[phase 3] command:", "[rl] command:"]:
        assert tag in result.stdout

    (out / "data" / "long" / "pairs.parquet").rename(out / "data" / "long" / "moved.parquet")
    try:
        refused = subprocess.run(
            [sys.executable, SMOKE, str(out), "--layers", "1", "--dry_run", "--stages", "dpo"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    finally:
        (out / "data" / "long" / "moved.parquet").rename(out / "data" / "long" / "pairs.parquet")
    assert (
        refused.returncode == 1 and "| dpo | REJECTED: error:" in refused.stdout and "pairs.parquet" in refused.stdout
    )
