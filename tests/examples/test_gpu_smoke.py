"""scripts/gpu_smoke.sh, the first run on a new GPU node, checked on this machine without
a GPU: it says so in one line and does nothing; DRY_RUN=1 prints every stage's command,
each checked by its recipe (GRPO's with the vLLM rollout, a GPU configuration verl
accepts) and writes nothing; and with a stand-in GPU and stand-in trainers, a failed stage
is recorded in the table, the next stages still run and the exit code says so."""

import os
import stat
import subprocess
import sys

from tests.conftest import REPO
from tests.examples.test_examples import RECIPE_KEYS, load_script, rl_summary

SMOKE = os.path.join(REPO, "scripts", "gpu_smoke.sh")
# The recipes print `[tag] command: ...` (what scripts/print_config.py reads), the other stages `[tag] would run: ...`.
STAGE_LINES = ["[model] would run: ", "[data] would run: ", "[sft] command: ", "[dpo] command: ", "[rl] command: "]
STAGE_LINES += ["[eval] would run: "]


def run_smoke(*args, cwd, path_prepend: str | None = None, **env):
    """The script as a user runs it, from another folder, with no GPU visible to torch (on a
    GPU machine too) and none of a developer's recipe exports."""
    base = {k: v for k, v in os.environ.items() if k not in RECIPE_KEYS}
    if path_prepend:
        base["PATH"] = path_prepend + os.pathsep + base["PATH"]
    return subprocess.run(
        ["bash", SMOKE, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", **env},
        timeout=300,
    )


def write_executable(path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def fake_nvidia_smi(folder) -> str:
    """An nvidia-smi that answers the script's queries: 1234 MiB used, sampled in a loop."""
    folder.mkdir(exist_ok=True)
    write_executable(
        folder / "nvidia-smi",
        """#!/usr/bin/env bash
case "$*" in
  *-lms*) while :; do echo 1234; sleep 0.2; done ;;
  *name*) echo "Stand-in GPU, 81559 MiB, 550.00" ;;
  *) echo "stand-in nvidia-smi" ;;
esac
""",
    )
    return str(folder)


def assert_one_line_and_nothing_written(result, cwd, *phrases):
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output
    assert output and "\n" not in output, output
    assert "no GPU" in output and "nothing was run" in output
    for phrase in phrases:
        assert phrase in output
    assert os.listdir(cwd) == []  # not even the default out/gpu_smoke


def test_help_says_what_it_does(tmp_path):
    result = run_smoke("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "scripts/gpu_smoke.sh [OUT_DIR]" in result.stdout and "DRY_RUN=1" in result.stdout
    assert os.listdir(tmp_path) == []


def test_without_a_gpu_it_says_so_in_one_line_and_does_nothing(tmp_path):
    # Here nvidia-smi is missing; where it is not, torch sees no GPU (CUDA_VISIBLE_DEVICES="").
    assert_one_line_and_nothing_written(run_smoke(cwd=tmp_path), tmp_path)


def test_nvidia_smi_without_a_gpu_torch_sees_is_no_gpu_either(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    bin_dir = fake_nvidia_smi(tmp_path / "bin")
    result = run_smoke(cwd / "out", cwd=cwd, path_prepend=bin_dir)
    assert_one_line_and_nothing_written(result, cwd, "torch.cuda.device_count() is 0")


def assert_every_stage_command_printed_with_the_paths_of_the_run(stdout: str, out) -> None:
    lines = stdout.splitlines()
    for start in STAGE_LINES:
        assert any(line.startswith(start) for line in lines), start
    assert f"-m afm_trainer.models.real_shape --out {out}/model" in stdout
    assert f"scripts/gpu_smoke.py data {out}/data" in stdout
    (evaluation,) = [line for line in lines if line.startswith("[eval] would run: ")]
    assert "-m afm_trainer.eval" in evaluation and "--suite algorithmic" in evaluation
    assert f"--model {out}/grpo/global_step_2/actor/huggingface" in evaluation
    assert f"--data {out}/data/world/heldout/algorithmic.jsonl" in evaluation

    commands = {c.tag: c for c in load_script("print_config").parse_commands(stdout)}
    assert sorted(commands) == ["dpo", "rl", "sft"]
    assert commands["sft"].module == "afm_trainer.verl_ext.sft_trainer"
    assert commands["dpo"].module == "afm_trainer.recipes.dpo.trainer"
    assert commands["rl"].module == "verl.trainer.main_ppo"
    for tag, files in (("sft", "sft/train.parquet"), ("dpo", "pairs.parquet")):
        overrides = commands[tag].overrides
        assert f"model.path={out}/model" in overrides and f"data.train_files={out}/data/{files}" in overrides
        for override in ("device=gpu", "engine.strategy=fsdp2", "trainer.n_gpus_per_node=1"):
            assert override in overrides, (tag, override)
        assert any(o.startswith("++model.override_config.attn_implementation=") for o in overrides)
    assert stdout.count("--nproc_per_node=1 --nnodes=1 --standalone") == 2


def assert_grpo_uses_the_vllm_rollout_on_one_gpu_and_verl_accepts_it(stdout: str, out) -> None:
    rl = stdout.split("[rl] command: ", 1)[1]
    summary = rl_summary(rl)
    assert summary["actor_rollout_ref.rollout.name"] == "vllm" and summary["trainer.device"] == "cuda"
    assert summary["trainer.n_gpus_per_node"] == 1 and summary["trainer.total_training_steps"] == 2
    assert summary["actor_rollout_ref.model.path"] == f"{out}/model"
    assert summary["algorithm.adv_estimator"] == "grpo"
    assert "ROLLOUT=vllm  (command line)" in stdout
    assert "++actor_rollout_ref.model.override_config.attn_implementation=" in rl


def test_dry_run_prints_and_checks_every_stage_command_and_writes_nothing(tmp_path):
    """One test, not several sharing a fixture: under xdist each worker would run it again."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "smoke"
    result = run_smoke(out, cwd=tmp_path, DRY_RUN="1", TMPDIR=str(scratch))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_every_stage_command_printed_with_the_paths_of_the_run(result.stdout, out)
    assert_grpo_uses_the_vllm_rollout_on_one_gpu_and_verl_accepts_it(result.stdout, out)
    # the recipes' own checks passed, and every trainer config composes as verl composes it
    for tag in ("sft", "dpo", "rl"):
        assert f"[{tag}] config composes and passes verl's checks" in result.stdout, tag
    for stage in ("sft", "dpo", "grpo"):
        assert any(line.split()[:2] == [stage, "accepted"] for line in result.stdout.splitlines()), stage
    assert "DRY RUN PASSED" in result.stdout
    # nothing written: no OUT_DIR, the stand-ins gone, and shown under the run's own paths
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["tmp"]
    assert not [name for name in os.listdir(scratch) if name.startswith("gpu_smoke.")]
    assert f"{scratch}/gpu_smoke." not in result.stdout + result.stderr


def test_a_failed_stage_is_recorded_and_the_others_still_run(tmp_path):
    """A stand-in GPU (nvidia-smi, and torch's count through a python wrapper) and stand-in
    trainers: SFT logs two steps, DPO fails as a trainer does, GRPO fails; the model is a
    nano one. The real data stage and evaluation run."""
    bin_dir = fake_nvidia_smi(tmp_path / "bin")
    python = write_executable(
        tmp_path / "bin" / "python",
        f"""#!/usr/bin/env bash
real={sys.executable}
[ "${{2:-}}" = gpus ] && {{ echo 1; exit 0; }}
case "$1 ${{2:-}}" in
  "-m afm_trainer.models.real_shape")
    "$real" -m afm_trainer.models.tiny --out "$4" --size nano >/dev/null || exit 1
    echo '{{}}' > "$4/afm_real_shape.json"; echo "wrote $4: a nano stand-in"; exit 0 ;;
  "-m afm_trainer.recipes.sft.main")
    mkdir -p "$4"
    echo '{{"step": 1, "data": {{"perf/max_memory_allocated_gb": 3.5}}}}' > "$4/metrics.jsonl"
    echo '{{"step": 2, "data": {{"perf/max_memory_allocated_gb": 4.25}}}}' >> "$4/metrics.jsonl"
    exit 0 ;;
  "-m afm_trainer.recipes.dpo.main")
    echo "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    echo "error: dpo trainer exited with code 1 (its log is above)" >&2; exit 1 ;;
  "-m afm_trainer.recipes.grpo.main")
    echo "error: the vLLM rollout did not start" >&2; exit 3 ;;
esac
exec "$real" "$@"
""",
    )
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = run_smoke("out", cwd=cwd, path_prepend=bin_dir, PYTHON=python)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    out = cwd / "out"
    table = result.stdout[result.stdout.index("stage  result") :]
    rows = {line.split()[0]: line for line in table.splitlines()[1:7]}
    assert list(rows) == ["model", "data", "sft", "dpo", "grpo", "eval"]
    assert rows["model"].split()[1] == "ok" and "a nano stand-in" in rows["model"]
    assert rows["data"].split()[1] == "ok"
    sft = rows["sft"].split()  # stage, result, seconds, steps, torch peak GB, GPU used peak GB, note...
    assert sft[1] == "ok" and sft[3:6] == ["2", "4.25", "1.2"]
    assert "failed (1)" in rows["dpo"] and "torch.OutOfMemoryError: CUDA out of memory" in rows["dpo"]
    assert "failed (3)" in rows["grpo"] and "error: the vLLM rollout did not start" in rows["grpo"]
    assert rows["eval"].split()[1] == "ok" and "accuracy" in rows["eval"] and "the untrained model" in rows["eval"]
    assert "FAILED: dpo, grpo" in table
    assert (out / "summary.txt").read_text().strip() == table.strip()
    assert (out / "eval" / "results.json").is_file()
    for stage in ("model", "data", "sft", "dpo", "grpo", "eval"):
        assert (out / "logs" / f"{stage}.log").is_file(), stage
    assert os.listdir(cwd) == ["out"]  # everything under OUT_DIR
