"""The recipe's argument handling: one clear error line for bad input, nothing started."""

import pandas as pd
import pytest

from afm_trainer.recipes.common import RecipeError, device_env, hydra_value, parse_recipe_args
from afm_trainer.recipes.sft.main import KEYS as SFT_KEYS
from tests.conftest import run_recipe


@pytest.fixture(scope="module")
def prompt_response_parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "pr.parquet"
    pd.DataFrame({"prompt": ["q"], "response": ["a"]}).to_parquet(path)
    return path


def cases(nano_model, starter_data, prompt_response_parquet, tmp_path):
    train, _ = starter_data
    ok = [f"MODEL={nano_model}", f"TRAIN_FILES={train}"]
    not_parquet = tmp_path / "notes.txt"
    not_parquet.write_text("hello")
    return {
        "missing data file": (
            ["1", tmp_path / "o", f"MODEL={nano_model}", "TRAIN_FILES=/no/such/train.parquet"],
            "TRAIN_FILES file not found: /no/such/train.parquet",
        ),
        "unknown model path": (
            ["1", tmp_path / "o", "MODEL=/no/such/model", f"TRAIN_FILES={train}"],
            "MODEL path does not exist: /no/such/model",
        ),
        "model folder without config": (
            ["1", tmp_path / "o", f"MODEL={tmp_path}", f"TRAIN_FILES={train}"],
            "without config.json",
        ),
        "no model": (["1", tmp_path / "o", f"TRAIN_FILES={train}"], "MODEL is not set"),
        "bad nproc": (["two", tmp_path / "o", *ok], "NPROC must be a whole number"),
        "zero nproc": (["0", tmp_path / "o", *ok], "NPROC must be a whole number"),
        "unknown key": (["1", tmp_path / "o", *ok, "MODLE=x"], "unknown recipe argument MODLE"),
        "wrong columns": (
            ["1", tmp_path / "o", f"MODEL={nano_model}", f"TRAIN_FILES={prompt_response_parquet}"],
            "has no `messages` column (columns: prompt, response)",
        ),
        "not parquet": (
            ["1", tmp_path / "o", f"MODEL={nano_model}", f"TRAIN_FILES={not_parquet}"],
            "is not a readable parquet file",
        ),
        "multi-node without master": (["1", tmp_path / "o", *ok, "NNODES=2"], "NNODES=2 needs MASTER_ADDR"),
        "unknown config": (["1", tmp_path / "o", *ok, "CONFIG=nope"], "CONFIG nope not found"),
        "nodes not a number": (
            ["1", tmp_path / "o", *ok, "NNODES=two"],
            "NNODES must be a whole number >= 1, got 'two'",
        ),
        "negative nodes": (["1", tmp_path / "o", *ok, "NNODES=-1"], "NNODES must be a whole number >= 1, got '-1'"),
        "rank past the nodes": (
            ["1", tmp_path / "o", *ok, "NNODES=2", "NODE_RANK=2", "MASTER_ADDR=10.0.0.1"],
            "NODE_RANK must be a whole number 0..1, got '2'",
        ),
        "port out of range": (
            ["1", tmp_path / "o", *ok, "NNODES=2", "MASTER_ADDR=10.0.0.1", "MASTER_PORT=70000"],
            "MASTER_PORT must be a whole number 1..65535, got '70000'",
        ),
        "interpolation in a path": (
            ["1", tmp_path / "o" / "${oc.env:HOME}", *ok],
            "OUT_DIR '" + str(tmp_path / "o" / "${oc.env:HOME}") + "' holds `${`",
        ),
    }


def test_bad_arguments_give_one_clear_error_line(nano_model, starter_data, prompt_response_parquet, tmp_path):
    for name, (args, message) in cases(nano_model, starter_data, prompt_response_parquet, tmp_path).items():
        result = run_recipe(*args, env={"MODEL": "", "TRAIN_FILES": ""}, timeout=60)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (name, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (name, lines)
        assert "Traceback" not in result.stdout + result.stderr
        assert not (tmp_path / "o").exists(), f"{name}: nothing may start on bad input"


def test_nproc_larger_than_visible_gpus_is_refused():
    with pytest.raises(RecipeError, match="NPROC=4 but only 2 GPU"):
        device_env(nproc=4, gpus=2)
    assert device_env(nproc=2, gpus=2) == {}
    assert device_env(nproc=2, gpus=0)["VERL_PLATFORM"] == "cpu"


def test_recipe_keys_and_hydra_overrides_are_told_apart(monkeypatch):
    monkeypatch.setenv("VAL_FILES", "from_env.parquet")
    args = parse_recipe_args(["2", "out", "MODEL=m", "optim.lr=1e-4", "+model.x=1", "trainer.total_epochs=2"], SFT_KEYS)
    assert args.keys == {"MODEL": "m"} and args.get("VAL_FILES") == "from_env.parquet"
    assert args.overrides == ["optim.lr=1e-4", "+model.x=1", "trainer.total_epochs=2"]


def test_dry_run_prints_the_command_and_runs_nothing(nano_model, starter_data, tmp_path):
    train, val = starter_data
    out = tmp_path / "dry"
    result = run_recipe(
        2, out, f"MODEL={nano_model}", f"TRAIN_FILES={train}", f"VAL_FILES={val}", "DRY_RUN=1", "optim.lr=5e-4"
    )
    assert result.returncode == 0, result.stderr
    (line,) = [out for out in result.stdout.splitlines() if out.startswith("[sft] command: ")]
    for part in (
        "VERL_PLATFORM=cpu",
        "--nproc_per_node=2",
        "-m afm_trainer.verl_ext.sft_trainer",
        "device=cpu",
        f"model.path={nano_model}",
        f"data.train_files={train}",
        "optim.lr=5e-4",
    ):
        assert part in line, part
    assert not out.exists()


def test_multi_node_arguments_reach_torchrun(nano_model, starter_data, tmp_path):
    train, _ = starter_data
    result = run_recipe(
        2,
        tmp_path / "mn",
        f"MODEL={nano_model}",
        f"TRAIN_FILES={train}",
        "DRY_RUN=1",
        "NNODES=2",
        "NODE_RANK=1",
        "MASTER_ADDR=10.0.0.1",
        "MASTER_PORT=2222",
    )
    assert result.returncode == 0, result.stderr
    for part in ("--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1", "--master_port=2222", "trainer.nnodes=2"):
        assert part in result.stdout, part
    assert "--standalone" not in result.stdout


@pytest.mark.parametrize("recipe", ["train_sft", "train_progressive", "train_grpo"])
def test_every_recipe_says_where_each_argument_came_from(recipe, nano_model, starter_data, tmp_path):
    train, _ = starter_data
    # A stale export (MODEL) next to a command-line key, and one emptied back to its default.
    phase = "PHASE1_" if recipe == "train_progressive" else ""
    data_key, val_key = f"{phase}TRAIN_FILES", f"{phase}VAL_FILES"
    env = {"MODEL": str(nano_model), "NNODES": "1", val_key: "old.parquet"}
    args = [1, tmp_path / "o", f"{data_key}={train}", f"{val_key}=", "DRY_RUN=1"]
    result = run_recipe(*args, recipe=recipe, env=env)
    head = result.stdout.split("recipe arguments:\n", 1)[1].splitlines()
    assert head[0] == f"  MODEL={nano_model}  (environment)"
    assert f"  {data_key}={train}  (command line)" in head
    assert "  NNODES=1  (environment)" in head and "  DRY_RUN=1  (command line)" in head
    defaults = next(line for line in head if line.startswith("  defaults: "))
    assert val_key in defaults.split(": ", 1)[1].split(", ")


def test_paths_hydra_would_misread_reach_the_trainer_intact(nano_model, starter_data, tmp_path):
    """`=`, `,`, quotes, spaces and brackets in OUT_DIR, MODEL and data paths: the
    trainer's configuration, composed by Hydra from the printed command, holds them as given."""
    import shlex

    from hydra import compose, initialize_config_dir

    from afm_trainer.recipes.sft.main import CONFIG_DIR

    train, _ = starter_data
    model = tmp_path / "models" / "it's [v=1]"
    model.parent.mkdir()
    model.symlink_to(nano_model, target_is_directory=True)
    data = tmp_path / "data" / "split=train a b"  # commas separate TRAIN_FILES
    data.mkdir(parents=True)
    (data / "train.parquet").symlink_to(train)
    out = tmp_path / "runs" / "lr=1e-4,bs=[8]"
    result = run_recipe(1, out, f"MODEL={model}", f"TRAIN_FILES={data}/train.parquet", "DRY_RUN=1")
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("[sft] command: ")]
    argv = shlex.split(line.split(": ", 1)[1])
    overrides = argv[argv.index("--config-name=sft") + 1 :]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = compose(config_name="sft", overrides=overrides)
    assert config.model.path == str(model)
    assert config.data.train_files == f"{data}/train.parquet"
    assert config.trainer.default_local_dir == str(out)


def test_hydra_values_read_back_as_given_or_are_refused():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for value in ["/plain/path", "runs/lr=1e-4", "a,b", "it's", 'say "hi"', "[x]", "{y: 1}", "a b", "null", "1e-4"]:
        assert parser.parse_override(f"k={hydra_value(value, 'X')}").value() == value, value
    assert hydra_value("/plain/path", "X") == "/plain/path"  # quoted only where needed
    for value in ["${oc.env:HOME}/x", "c:\\models", "a\nb"]:
        with pytest.raises(RecipeError, match="X"):
            hydra_value(value, "X")


def test_integer_and_rate_keys_of_every_recipe_are_checked(nano_model, tmp_path):
    result = run_recipe(1, tmp_path / "rl", f"MODEL={nano_model}", "STEPS=-3", "DRY_RUN=1", recipe="train_grpo")
    assert result.returncode == 2 and result.stderr.strip() == "error: STEPS must be a whole number >= 1, got '-3'"
    result = run_recipe(
        1, tmp_path / "chain", f"MODEL={nano_model}", "DATA_DIR=/nowhere", "PHASE2_LR=fast", recipe="train_progressive"
    )
    assert result.returncode == 2 and result.stderr.strip() == "error: PHASE2_LR must be a positive number, got 'fast'"
    assert not (tmp_path / "chain").exists()
