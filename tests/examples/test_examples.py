"""examples/: the sample trajectories convert cleanly, and the GPU example scripts build
configurations verl accepts (their DRY_RUN=1 output, composed and checked on this CPU)."""

import importlib.util
import io
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from afm_trainer.data.convert import messages_column
from afm_trainer.traces.registry import FORMATS
from tests.conftest import REPO
from tests.recipes.test_checkpoints import write_checkpoint

TRACES = os.path.join(REPO, "examples", "traces")
GPU = os.path.join(REPO, "examples", "gpu")
CONVERT = os.path.join(REPO, "data_preprocess", "convert_traces.py")
QWEN = "Qwen/Qwen2.5-0.5B-Instruct"
SFT_8GPU = "run_qwen2_5_0_5b_progressive_sft_8gpu.sh"
SFT_2NODES = "run_qwen2_5_0_5b_progressive_sft_2nodes.sh"
GRPO_8GPU = "run_qwen2_5_0_5b_grpo_vllm_8gpu.sh"
GRPO_2NODES = "run_qwen2_5_0_5b_grpo_vllm_2nodes.sh"
# Recipe arguments the examples set or read from the environment: a developer's own
# exports must not leak into the dry runs.
RECIPE_KEYS = (
    "MODEL",
    "DATA_DIR",
    "RL_DATA_DIR",
    "SFT_DIR",
    "OUT_DIR",
    "TRAIN_FILES",
    "VAL_FILES",
    "CONFIG",
    "NNODES",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "RAY_ADDRESS",
    "ROLLOUT",
    "VLLM_PYTHON",
    "ALGO",
    "STEPS",
    "CORPUS",
    "SEARCH_URL",
    "DRY_RUN",
)


def load_script(name: str):
    """A scripts/ CLI as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def print_config():
    return load_script("print_config")


# --- examples/traces ---------------------------------------------------------------


def sample_file(fmt: str) -> str:
    """The sample of a format: ``FMT.jsonl``, or ``FMT.json`` (a JSON array) for formats
    whose authors publish JSON arrays."""
    (name,) = [n for n in (f"{fmt}.jsonl", f"{fmt}.json") if os.path.exists(os.path.join(TRACES, n))]
    return name


def record_count(fmt: str) -> int:
    path = os.path.join(TRACES, sample_file(fmt))
    if path.endswith(".json"):
        with open(path) as f:
            return len(json.load(f))
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def assert_clean_conversion(output: str, fmt: str) -> None:
    """Every record converted, none rejected, and each sample trains assistant turns only."""
    n = record_count(fmt)
    with open(output + ".report.json") as f:
        report = json.load(f)
    assert report["records_in"] == report["records_converted"] == n and report["records_rejected"] == 0, report
    with open(output + ".rejects.jsonl") as f:
        assert f.read() == ""
    frame = pd.read_parquet(output)
    for messages in frame[messages_column(frame.columns)]:
        trained = [m["role"] for m in messages if m["train"]]
        assert trained and set(trained) == {"assistant"}


def test_there_is_one_small_sample_file_per_input_format():
    for fmt in FORMATS:
        assert 3 <= record_count(fmt) <= 5, fmt


def test_readme_commands_convert_every_sample_file_with_zero_rejects(tmp_path):
    # Run the README's block as written, from a folder that looks like the repository root.
    with open(os.path.join(TRACES, "README.md")) as f:
        blocks = re.findall(r"```bash\n(.*?)```", f.read(), re.DOTALL)
    (block,) = [b for b in blocks if "convert_traces.py" in b]
    for fmt in FORMATS:
        assert f"--format auto --mode multiturn --input_file examples/traces/{sample_file(fmt)}" in block, fmt
    for folder in ("data_preprocess", "examples"):
        os.symlink(os.path.join(REPO, folder), tmp_path / folder)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for fmt in FORMATS:
        n = record_count(fmt)
        assert f"{n} records in: {n} converted into" in result.stdout
        assert f"format: {fmt} (told from " in result.stdout  # auto picked the sample's own format
        assert_clean_conversion(str(tmp_path / "out" / "traces" / f"{fmt}.parquet"), fmt)
    assert result.stdout.count(", 0 rejected") == len(FORMATS)
    # the README promises two DPO pairs from the wrong student drafts
    assert len(pd.read_parquet(tmp_path / "out" / "traces" / "teacher_cot.pairs.parquet")) == 2


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_sample_traces_convert_stepwise_with_zero_rejects(tmp_path, fmt):
    output = str(tmp_path / f"{fmt}.parquet")
    result = subprocess.run(
        [
            sys.executable,
            CONVERT,
            "--format",
            fmt,
            "--mode",
            "stepwise",
            "--dedup",
            "--input_file",
            os.path.join(TRACES, sample_file(fmt)),
            "--output_file",
            output,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert_clean_conversion(output, fmt)
    frame = pd.read_parquet(output)  # one assistant turn a trace (teacher_cot): no context, `messages`
    for messages in frame[messages_column(frame.columns)]:  # stepwise: only the last turn trains
        assert [m["train"] for m in messages] == [False] * (len(messages) - 1) + [True]


# --- examples/gpu: dry runs ----------------------------------------------------------


def run_example(script: str, *args, **env):
    """An example script with DRY_RUN=1, as a user runs it from another folder.

    The hub stays reachable for the recipe's argument check (a dry run loads no model, so
    the hub id Qwen/Qwen2.5-0.5B-Instruct is accepted as MODEL without a download)."""
    base = {k: v for k, v in os.environ.items() if k not in RECIPE_KEYS and k != "HF_HUB_OFFLINE"}
    return subprocess.run(
        ["bash", os.path.join(GPU, script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(REPO),
        env={**base, "PYTHON": sys.executable, "DRY_RUN": "1", **env},
    )


def script_values(script: str, pattern: str) -> list[str]:
    """Values an example script sets, read from the script itself (e.g. PHASE1_LR=...)."""
    with open(os.path.join(GPU, script)) as f:
        return re.findall(pattern, f.read())


def assert_verl_accepts_sft(config, local_model: str) -> None:
    """What verl's SFT trainer does with its config before it trains: the dataclass
    conversions of SFTTrainer._build_config, its profiler-interval check, and the batch
    arithmetic its data loader and dynamic batching rely on."""
    from verl.utils.config import omega_conf_to_dataclass

    for section in ("engine", "optim", "checkpoint", "profiler"):
        omega_conf_to_dataclass(config[section])
    # HFModelConfig loads the tokenizer and HF config from model.path, and there is no hub
    # here: the same model section, pointed at a local model.
    model = OmegaConf.create(OmegaConf.to_container(config.model, resolve=True))
    model.path = local_model
    omega_conf_to_dataclass(model)
    start, end = config.trainer.profile_interval
    assert end >= start and (start >= 0 or end < 0)
    world = config.trainer.nnodes * config.trainer.n_gpus_per_node
    assert config.data.train_batch_size % world == 0  # verl floors the per-rank share
    if config.data.use_dynamic_bsz:  # verl's micro-batching asserts every sample fits
        assert config.data.max_token_len_per_gpu >= config.data.max_length


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """DATA_DIR as run_pipeline.sh writes it, RL parquets, and SFT_DIR holding a complete
    final-phase checkpoint (the recipes read phase 1's file and the tracker up front)."""
    root = tmp_path_factory.mktemp("example_data")
    conversation = [
        {"role": "user", "content": "Capital of Canada?", "train": False},
        {"role": "assistant", "content": "<answer>Ottawa</answer>", "train": True},
    ]
    for phase in ("multiturn", "summary_only", "summary_prefix"):
        os.makedirs(root / "sft" / phase)
        pd.DataFrame({"messages": [conversation] * 4}).to_parquet(root / "sft" / phase / "train.parquet")
    os.makedirs(root / "rl")
    prompts = pd.DataFrame(
        {
            "prompt": [[{"role": "user", "content": "Write solve(x) returning x + 1."}]] * 4,
            "data_source": ["afm/code"] * 4,
        }
    )
    for split in ("train", "val"):
        prompts.to_parquet(root / "rl" / f"{split}.parquet")
    phase3 = root / "sft_out" / "phase3_summary_prefix"
    write_checkpoint(phase3, 40)  # a complete checkpoint's files (placeholders): the recipe checks them
    (phase3 / "latest_checkpointed_iteration.txt").write_text("40")
    checkpoint = phase3 / "global_step_40" / "huggingface"
    return {"sft": root / "sft", "rl": root / "rl", "sft_out": root / "sft_out", "checkpoint": str(checkpoint)}


def test_every_gpu_example_is_covered_here():
    assert sorted(f for f in os.listdir(GPU) if f.endswith(".sh")) == sorted(
        [SFT_8GPU, SFT_2NODES, GRPO_8GPU, GRPO_2NODES]
    )


def test_progressive_sft_on_8_gpus_composes_configs_verl_accepts(
    tmp_path, data, nano_model, print_config, monkeypatch, capsys
):
    out = tmp_path / "sft"
    result = run_example(SFT_8GPU, out, data["sft"])
    assert result.returncode == 0, result.stderr
    commands = print_config.parse_commands(result.stdout)
    assert [c.tag for c in commands] == ["phase 1", "phase 2", "phase 3"]
    assert all(c.module == "afm_trainer.verl_ext.sft_trainer" for c in commands)
    assert result.stdout.count("--nproc_per_node=8 --nnodes=1 --standalone") == 3

    # The documented preview: DRY_RUN=1 bash examples/gpu/... | python scripts/print_config.py -
    monkeypatch.setattr(sys, "stdin", io.StringIO(result.stdout))
    assert print_config.main(["-"]) == 0
    configs = [OmegaConf.create(doc) for doc in yaml.safe_load_all(capsys.readouterr().out)]
    assert len(configs) == 3
    assert configs[0].model.path == QWEN
    assert configs[1].model.path == str(out / "phase1_multiturn" / "global_step_LATEST" / "huggingface")
    assert configs[2].model.path == str(out / "phase2_summary_only" / "global_step_LATEST" / "huggingface")
    lrs = script_values(SFT_8GPU, r"PHASE(\d)_LR=(\S+)")
    assert [(str(i + 1), config.optim.lr) for i, config in enumerate(configs)] == [(n, float(lr)) for n, lr in lrs]
    epochs = script_values(SFT_8GPU, r"PHASE\d_EPOCHS=(\d+)")
    assert [config.trainer.total_epochs for config in configs] == [int(e) for e in epochs]
    for config in configs:
        assert config.trainer.device == "cuda" and config.trainer.n_gpus_per_node == 8 and config.trainer.nnodes == 1
        assert config.data.train_files == str(
            data["sft"] / config.trainer.experiment_name.split("_", 1)[1] / "train.parquet"
        )
        assert config.data.custom_cls.name == "AgentSFTDataset"
        assert_verl_accepts_sft(config, nano_model)
    assert not out.exists()  # a dry run writes nothing


def test_progressive_sft_on_2_nodes_joins_the_master(tmp_path, data, nano_model, print_config):
    missing = run_example(SFT_2NODES, tmp_path / "sft", data["sft"], MASTER_ADDR="10.0.0.1")
    assert missing.returncode != 0 and "NODE_RANK" in missing.stderr and "command:" not in missing.stdout

    result = run_example(SFT_2NODES, tmp_path / "sft", data["sft"], NODE_RANK="1", MASTER_ADDR="10.0.0.1")
    assert result.returncode == 0, result.stderr
    commands = print_config.parse_commands(result.stdout)
    assert len(commands) == 3
    assert (
        result.stdout.count("--nproc_per_node=8 --nnodes=2 --node_rank=1 --master_addr=10.0.0.1 --master_port=29500")
        == 3
    )
    for command in commands:
        config = print_config.compose(command)
        assert config.trainer.nnodes == 2 and config.trainer.n_gpus_per_node == 8 and config.trainer.device == "cuda"
        assert_verl_accepts_sft(config, nano_model)


def rl_summary(stdout: str) -> dict:
    """The `key = json` lines the GRPO recipe prints under its validation verdict."""
    assert "[rl] configuration (accepted by verl's validation):" in stdout, stdout
    lines = stdout.split("accepted by verl's validation):\n", 1)[1].splitlines()
    return {k: json.loads(v) for k, v in (line.strip().split(" = ", 1) for line in lines if " = " in line)}


def test_grpo_with_vllm_on_8_gpus_starts_from_the_sft_model_and_verl_accepts_it(tmp_path, data):
    out = tmp_path / "grpo"
    result = run_example(GRPO_8GPU, out, data["rl"], SFT_DIR=str(data["sft_out"]))
    assert result.returncode == 0, result.stderr
    summary = rl_summary(result.stdout)
    assert summary["actor_rollout_ref.model.path"] == data["checkpoint"]  # the SFT example's final phase
    assert summary["actor_rollout_ref.rollout.name"] == "vllm" and summary["trainer.device"] == "cuda"
    assert summary["trainer.n_gpus_per_node"] == 8 and summary["trainer.nnodes"] == 1
    assert summary["algorithm.adv_estimator"] == "grpo" and summary["critic (GAE)"] is False
    assert summary["actor_rollout_ref.rollout.n"] == int(script_values(GRPO_8GPU, r"rollout\.n=(\d+)")[0])
    assert f"data.train_files={data['rl'] / 'train.parquet'}" in result.stdout
    assert not out.exists()


def test_grpo_on_2_nodes_joins_the_ray_cluster_and_verl_accepts_it(tmp_path, data):
    missing = run_example(GRPO_2NODES, tmp_path / "grpo", data["rl"], SFT_DIR=str(data["sft_out"]))
    assert missing.returncode != 0 and "RAY_ADDRESS" in missing.stderr and "command:" not in missing.stdout

    result = run_example(
        GRPO_2NODES, tmp_path / "grpo", data["rl"], SFT_DIR=str(data["sft_out"]), RAY_ADDRESS="10.0.0.1:6379"
    )
    assert result.returncode == 0, result.stderr
    summary = rl_summary(result.stdout)
    assert summary["ray_kwargs.ray_init"]["address"] == "10.0.0.1:6379"
    assert summary["trainer.nnodes"] == 2 and summary["trainer.n_gpus_per_node"] == 8
    assert summary["actor_rollout_ref.rollout.name"] == "vllm"
    assert summary["actor_rollout_ref.model.path"] == data["checkpoint"]
