"""recipes/train_chain.sh and recipes/self_improve.sh: stages of any kind declared in a
file, chained by latest complete checkpoints, resumable, dry runs equal to real runs."""

import os
import subprocess
import sys

import pytest

from afm_trainer.checkpoints import latest_complete, tracked_step
from afm_trainer.recipes.chain.main import Stage, load_chain, reaches
from afm_trainer.recipes.common import RecipeError
from tests.conftest import REPO, kill_tree, run_recipe

SHORT = ["trainer.total_training_steps=4", "trainer.save_freq=2", "data.train_batch_size=4"]


def test_the_shipped_chains_load_with_their_stage_keys():
    progressive = load_chain("progressive")
    assert [s.folder for s in progressive.stages] == [
        "phase1_multiturn",
        "phase2_summary_only",
        "phase3_summary_prefix",
    ]
    assert {"PHASE1_LR", "PHASE3_EPOCHS", "PHASE2_TRAIN_FILES", "DATA_DIR"} <= set(progressive.keys)
    improve = load_chain("self_improve")
    assert [(s.key, s.kind, s.data) for s in improve.stages] == [
        ("PHASE_A", "sft", "track_a"),
        ("PHASE_B", "sft", "track_b"),
        ("PHASE_C", "dpo", "pairs"),
    ]


@pytest.mark.parametrize(
    "body, message",
    [
        ("stages: []", "declares no stages"),
        ("stages:\n  - {key: A, name: a, folder: a, kind: ppo, data: d, lr: 1, epochs: 1}", "kind 'ppo' is not one of"),
        ("stages:\n  - {key: A, name: a, folder: a, kind: sft, data: d, lr: 1}", "stage 1 has no epochs"),
        ("stages:\n  - {key: A, name: a, folder: a, kind: sft, data: d, lr: 1, epochs: 1, start: B}", "start 'B'"),
        (
            "stages:\n  - {key: A, name: a, folder: a, kind: sft, data: d, lr: 1, epochs: 1, lrr: 2}",
            "unknown settings lrr",
        ),
    ],
)
def test_a_bad_chain_file_is_one_error_line(tmp_path, body, message):
    chain = tmp_path / "chain.yaml"
    chain.write_text(body)
    with pytest.raises(RecipeError, match=message):
        load_chain(str(chain))
    result = run_recipe(chain, 1, tmp_path / "out", recipe="train_chain", timeout=60)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and message.split("'")[0] in result.stderr


def test_dpo_overrides_reach_preference_stages_only():
    sft = Stage("A", "a", "a", "sft", "d", "1", "1")
    dpo = Stage("C", "c", "c", "dpo", "d", "1", "1")
    assert reaches("optim.lr=1", sft) and reaches("optim.lr=1", dpo)
    assert not reaches("dpo.beta=0.2", sft) and reaches("dpo.beta=0.2", dpo)
    distill = Stage("D", "d", "d", "distill", "d", "1", "1")
    assert reaches("distill.beta=0.5", distill) and not reaches("distill.beta=0.5", sft)
    assert not reaches("dpo.beta=0.2", distill) and not reaches("distill.beta=0.5", dpo)
    assert not reaches("+dpo.new=1", sft)


@pytest.fixture(scope="module")
def strategy_data(tmp_path_factory):
    """Seed 004's data pipeline output on 60 questions of the demo world."""
    from afm_trainer.data.self_improve import write_self_improve_data
    from afm_trainer.world.qa_world import build_world
    from afm_trainer.world.strategy_qa import make_strategy_questions, write_strategy_traces

    tmp = tmp_path_factory.mktemp("self_improve")
    questions = make_strategy_questions(build_world(0), seed=3, n=60)
    write_strategy_traces(str(tmp / "traces.jsonl"), questions, seed=3, error_rate=0.5)
    write_self_improve_data(str(tmp / "traces.jsonl"), str(tmp / "data"), val_ratio=0.2)
    return tmp / "data"


def stage_commands(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("[") and "] command: " in line]


@pytest.mark.e2e
def test_sft_then_dpo_chain_resumes_after_a_kill_in_the_preference_stage(tmp_path, nano_model, strategy_data):
    out = tmp_path / "chain"
    args = [1, out, f"MODEL={nano_model}", f"DATA_DIR={strategy_data}", *SHORT, "PHASE_C_LR=1e-4"]

    def self_improve(*extra):
        return run_recipe(*args, *extra, recipe="self_improve", timeout=600)

    dry = self_improve("DRY_RUN=1")
    assert dry.returncode == 0, dry.stderr
    planned = stage_commands(dry.stdout)
    assert [line.split(" command:")[0] for line in planned] == ["[phase A]", "[phase B]", "[phase C]"]
    assert "afm_trainer.recipes.dpo.trainer" in planned[2] and "dpo.schedule=" in planned[2]
    assert "dpo.schedule=" not in planned[0] + planned[1]  # dpo.* reaches the preference stage only
    assert not out.exists()

    # A real run, killed (every process) right after phase C's first checkpoint.
    child = subprocess.Popen(
        ["bash", os.path.join(REPO, "recipes", "self_improve.sh"), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"},
    )
    seen = []
    for line in child.stdout:
        seen.append(line)
        if "Updated checkpoint tracker" in line and "phaseC_dpo" in line:
            kill_tree(child.pid)
            break
    child.wait()
    phase_c = out / "phaseC_dpo"
    killed_at = tracked_step(str(phase_c))
    assert killed_at is not None and killed_at < 4, "".join(seen)[-3000:]
    assert (out / "phaseB_cot" / "PHASE_COMPLETE").exists() and not (phase_c / "PHASE_COMPLETE").exists()

    resumed = self_improve()
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "[phase A] complete" in resumed.stdout and "[phase B] complete" in resumed.stdout
    with open(phase_c / "metrics.jsonl") as f:
        assert int(f.readline().split('"step":')[1].split(",")[0]) == killed_at + 1  # no step repeated
    assert tracked_step(str(phase_c)) == 4 and (phase_c / "report.md").exists()

    # Every command the real runs printed is the dry run's, the placeholders filled in.
    real = set(stage_commands("".join(seen)) + stage_commands(resumed.stdout))
    expected = planned
    for stage in ("phaseA_direct", "phaseB_cot"):
        export = os.path.join(latest_complete(str(out / stage)), "huggingface")
        expected = [line.replace(str(out / stage / "global_step_LATEST" / "huggingface"), export) for line in expected]
    assert real == set(expected) and len(expected) == 3
    assert os.path.join(latest_complete(str(out / "phaseB_cot")), "huggingface") in expected[2]


def test_the_self_improvement_demo_dry_run_builds_nothing_and_only_the_run_needs_its_start_model(tmp_path):
    import yaml

    from afm_trainer.demo import load_settings

    settings = load_settings("self_improve")
    missing = {**settings, "model": {**settings["model"], "start_from": str(tmp_path / "no_demo")}}
    (tmp_path / "missing.yaml").write_text(yaml.safe_dump(missing))
    result = run_recipe(1, tmp_path / "out", f"DEMO_CONFIG={tmp_path / 'missing.yaml'}", recipe="self_improve")
    assert result.returncode == 2 and "run `make demo` first" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    preview = run_recipe(
        1, tmp_path / "out", f"DEMO_CONFIG={tmp_path / 'missing.yaml'}", "DRY_RUN=1", recipe="self_improve"
    )
    assert preview.returncode == 0, preview.stderr
    placeholder = tmp_path / "no_demo" / "phase3_summary_prefix" / "global_step_LATEST" / "huggingface"
    assert f"model.path={placeholder}" in stage_commands(preview.stdout)[0]
    assert not (tmp_path / "out").exists()

    scratch = {**settings, "model": {**settings["model"], "start_from": None}}
    (tmp_path / "scratch.yaml").write_text(yaml.safe_dump(scratch))
    dry = run_recipe(
        1, tmp_path / "out", f"DEMO_CONFIG={tmp_path / 'scratch.yaml'}", "DRY_RUN=1", recipe="self_improve"
    )
    assert dry.returncode == 0, dry.stderr
    assert [line.split(" command:")[0] for line in stage_commands(dry.stdout)] == [
        "[phase A]",
        "[phase B]",
        "[phase C]",
        "[phase B (unbalanced)]",
    ]
    unbalanced = stage_commands(dry.stdout)[3]
    assert "data_unbalanced/track_b/train.parquet" in unbalanced
    assert str(tmp_path / "out" / "phaseA_direct" / "global_step_LATEST" / "huggingface") in unbalanced
    assert not (tmp_path / "out").exists()


def test_the_afm_demo_dry_run_trains_four_models_from_one_start_and_builds_nothing(tmp_path):
    chain = load_chain("afm")
    assert [(s.key, s.data, s.start) for s in chain.stages] == [
        ("AFM", "afm", "MODEL"),
        ("PLANNER", "planner", "MODEL"),
        ("CODER", "coder", "MODEL"),
        ("REVIEWER", "reviewer", "MODEL"),
    ]
    dry = run_recipe(1, tmp_path / "out", "DRY_RUN=1", recipe="train_afm")
    assert dry.returncode == 0, dry.stderr
    commands = stage_commands(dry.stdout)
    assert [line.split(" command:")[0] for line in commands] == ["[AFM]", "[planner]", "[coder]", "[reviewer]"]
    model = str(tmp_path / "out" / "embedded" / "model")
    for line, data in zip(commands, ("afm", "planner", "coder", "reviewer")):
        assert f"model.path={model} " in line and f"embedded/data/{data}/train.parquet" in line
        assert "optim.lr=2e-3" in line and "trainer.total_epochs=4" in line
    assert not (tmp_path / "out").exists()


def test_a_stage_with_start_null_starts_from_the_stage_before(tmp_path):
    chain = tmp_path / "chain.yaml"
    chain.write_text(
        "stages:\n"
        "  - {key: A, name: a, folder: a, kind: sft, data: d, lr: 1, epochs: 1}\n"
        "  - {key: B, name: b, folder: b, kind: sft, data: d, lr: 1, epochs: 1, start: null}\n"
    )
    assert load_chain(str(chain)).stages[1].start is None


def test_on_node_1_each_stage_waits_for_node_0s_marker_before_the_next_starts(tmp_path, monkeypatch):
    """Multi-node: only node 0 merges a LoRA export and marks a stage complete; node 1
    starts the next stage only after that mark, never from an unmerged export."""
    import threading
    import time

    from afm_trainer.recipes.chain import main as chain_main
    from afm_trainer.recipes.common import RecipeArgs

    chain = load_chain("progressive")
    started = []

    def fake_stage(this, stage, inputs_exist):
        before = [os.path.exists(os.path.join(tmp_path, s.folder, chain_main.COMPLETE_MARKER)) for s in chain.stages]
        started.append((stage.key, before))
        return 0

    monkeypatch.setattr(chain_main, "run_stage", fake_stage)
    # node 0's merged export: there once node 0 has marked the stage (a real one needs a checkpoint)
    monkeypatch.setattr(
        chain_main,
        "latest_export",
        lambda out: (os.path.join(out, "merged"), os.path.exists(os.path.join(out, chain_main.COMPLETE_MARKER))),
    )
    keys = {"MODEL": str(tmp_path), "DATA_DIR": str(tmp_path / "data"), "NNODES": "2", "NODE_RANK": "1"}
    args = RecipeArgs(1, str(tmp_path), keys, [])

    def node0():  # marks each stage 0.5 s after node 1 has trained it
        for stage in chain.stages:
            while stage.key not in [key for key, _ in started]:
                time.sleep(0.05)
            time.sleep(0.5)
            os.makedirs(tmp_path / stage.folder, exist_ok=True)
            (tmp_path / stage.folder / chain_main.COMPLETE_MARKER).write_text("{}")

    thread = threading.Thread(target=node0, daemon=True)
    thread.start()
    list(chain_main.train_stages(chain, args, model_exists=True))
    thread.join(5)
    assert [key for key, _ in started] == [s.key for s in chain.stages]
    for index, (_, marked) in enumerate(started):
        assert marked[:index] == [True] * index and not any(marked[index:]), started

    monkeypatch.setattr(chain_main, "NODE0_WAIT_S", 0.3)
    lonely = RecipeArgs(1, str(tmp_path / "unshared"), keys, [])
    with pytest.raises(RecipeError, match="node 0 did not mark the stage complete within 0.3 s"):
        list(chain_main.train_stages(chain, lonely, model_exists=True))
    assert not os.path.exists(tmp_path / "unshared" / chain.stages[0].folder / chain_main.COMPLETE_MARKER)
