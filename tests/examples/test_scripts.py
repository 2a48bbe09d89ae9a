"""scripts/: the user utilities, run as a user runs them (from another folder)."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO
from tests.recipes.test_checkpoints import write_checkpoint

SCRIPTS = os.path.join(REPO, "scripts")
TRACES = os.path.join(REPO, "examples", "traces")
CONVERT = os.path.join(REPO, "data_preprocess", "convert_traces.py")


def load_script(name: str):
    """A scripts/ CLI as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args, cwd, **env):
    command = ["bash"] if name.endswith(".sh") else [sys.executable]
    return subprocess.run(
        [*command, os.path.join(SCRIPTS, name), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHON": sys.executable, **env},
    )


@pytest.mark.parametrize(
    "name", ["build_tiny_model.sh", "latest_checkpoint.sh", "show_sample.py", "print_config.py", "compare_rl_runs.py"]
)
def test_every_script_explains_itself_with_help(tmp_path, name):
    result = run_script(name, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower() or "scripts/" in result.stdout
    with open(os.path.join(SCRIPTS, name)) as f:  # and its docstring / header says what it does
        assert f.read().split("\n", 2)[1].strip(' #"') != ""


# --- show_sample ------------------------------------------------------------------


@pytest.fixture(scope="module")
def stepwise(tmp_path_factory):
    """The sample search traces, stepwise, and a row with earlier assistant and tool turns
    as context: only its last assistant turn is trained."""
    out = str(tmp_path_factory.mktemp("show") / "steps.parquet")
    subprocess.run(
        [
            sys.executable,
            CONVERT,
            "--format",
            "search_agent",
            "--mode",
            "stepwise",
            "--output_file",
            out,
            "--input_file",
            os.path.join(TRACES, "search_agent.jsonl"),
        ],
        check=True,
        capture_output=True,
    )
    rows = pd.read_parquet(out)["messages_with_untrained_turns"]
    row = next(i for i, m in enumerate(rows) if sum(x["role"] == "assistant" for x in m) >= 3)
    return out, row, list(rows[row])


@pytest.fixture(scope="module")
def dataset(stepwise, nano_model):
    from afm_trainer.data.show_sample import load_dataset

    return load_dataset(stepwise[0], nano_model)


def test_spans_mark_exactly_the_tokens_the_dataset_trains(stepwise, dataset):
    from afm_trainer.data.show_sample import sample_spans

    _, row, messages = stepwise
    item = dataset[row]
    spans = sample_spans(dataset, row)
    per_token = [s.trained for s in spans for _ in range(s.n_tokens)]
    assert per_token == [bool(b) for b in item["loss_mask"].tolist()]  # token for token, the dataset's mask
    tokenizer = dataset.tokenizer
    assert "".join(s.text for s in spans) == tokenizer.decode(item["input_ids"].tolist())
    (trained,) = [s.text for s in spans if s.trained]
    assert trained == messages[-1]["content"] + "<|im_end|>"
    untrained = "".join(s.text for s in spans if not s.trained)
    for earlier in [m for m in messages[:-1] if m["role"] in ("assistant", "tool")]:
        assert earlier["content"] in untrained  # context turns are shown, not trained


@pytest.fixture(scope="module")
def show_sample():
    return load_script("show_sample")


def test_show_sample_brackets_the_trained_text_when_not_on_a_terminal(
    stepwise, dataset, nano_model, show_sample, capsys
):
    parquet, row, _ = stepwise
    assert show_sample.main([parquet, "--tokenizer", nano_model, "--row", str(row)]) == 0  # captured: not a TTY
    shown = capsys.readouterr()
    item = dataset[row]
    ids, mask = item["input_ids"], item["loss_mask"].bool()
    tokenizer = dataset.tokenizer
    assert re.findall(r"\[\[(.*?)\]\]", shown.out, re.DOTALL) == [tokenizer.decode(ids[mask].tolist())]
    text = tokenizer.decode(ids.tolist())  # the whole sample, ending with the template's newline
    assert text.endswith("\n") and shown.out.replace("[[", "").replace("]]", "") == text
    assert "\033[" not in shown.out
    assert f"{int(mask.sum())} trained" in shown.err


def test_show_sample_colours_on_a_terminal_unless_plain(stepwise, nano_model, show_sample, monkeypatch, capsys):
    from afm_trainer.data.show_sample import ANSI_RESET, ANSI_TRAINED

    parquet, row, messages = stepwise
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert show_sample.main([parquet, "--tokenizer", nano_model, "--row", str(row)]) == 0
    coloured = capsys.readouterr().out
    target = messages[-1]["content"] + "<|im_end|>"
    expected = "\n".join(f"{ANSI_TRAINED}{line}{ANSI_RESET}" for line in target.split("\n"))
    assert coloured.count(ANSI_TRAINED) == target.count("\n") + 1 and expected in coloured and "[[" not in coloured

    assert show_sample.main([parquet, "--tokenizer", nano_model, "--row", str(row), "--plain"]) == 0
    plain = capsys.readouterr().out
    assert f"[[{target}]]" in plain and "\033[" not in plain

    assert show_sample.main([parquet, "--tokenizer", nano_model, "--row", "999"]) == 2
    assert "out of range" in capsys.readouterr().err


# --- print_config -----------------------------------------------------------------


def test_print_config_prints_the_sft_config_verl_will_run(tmp_path, nano_model, stepwise):
    out = tmp_path / "out"
    result = run_script(
        "print_config.py",
        "sft",
        1,
        out,
        f"MODEL={nano_model}",
        f"TRAIN_FILES={stepwise[0]}",
        "optim.lr=3e-5",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# [sft] python -m afm_trainer.verl_ext.sft_trainer --config-path=")
    (config,) = yaml.safe_load_all(result.stdout)
    assert config["model"]["path"] == nano_model
    assert config["optim"]["lr"] == 3e-5
    assert config["data"]["train_files"] == stepwise[0]
    assert config["trainer"]["default_local_dir"] == str(out)
    assert config["data"]["custom_cls"]["name"] == "AgentSFTDataset"  # the recipe's own config, not verl's bare one
    assert "${" not in result.stdout  # interpolations resolved
    assert not out.exists()  # the recipe ran as a dry run


def test_print_config_prints_one_config_per_progressive_phase(tmp_path, nano_model, stepwise, capsys):
    print_config = load_script("print_config")
    parquet = stepwise[0]
    keys = [f"PHASE{n}_TRAIN_FILES={parquet}" for n in (1, 2, 3)] + [
        "PHASE1_LR=3e-5",
        "PHASE2_LR=2e-5",
        "PHASE3_LR=1e-5",
    ]
    assert print_config.main(["progressive", "1", str(tmp_path / "out"), f"MODEL={nano_model}", *keys]) == 0
    output = capsys.readouterr().out
    assert re.findall(r"^# \[(phase \d)\]", output, re.MULTILINE) == ["phase 1", "phase 2", "phase 3"]
    configs = list(yaml.safe_load_all(output))
    assert [c["optim"]["lr"] for c in configs] == [3e-5, 2e-5, 1e-5]
    assert configs[0]["model"]["path"] == nano_model
    assert configs[2]["model"]["path"] == str(
        tmp_path / "out" / "phase2_summary_only" / "global_step_LATEST" / "huggingface"
    )


def test_print_config_reports_a_failing_recipe_in_one_error_line(tmp_path, capsys):
    print_config = load_script("print_config")
    assert print_config.main(["sft", "1", str(tmp_path / "out"), "MODEL=/no/such/model", "TRAIN_FILES=x.parquet"]) == 2
    err = capsys.readouterr().err
    assert "MODEL path does not exist: /no/such/model" in err and err.strip().endswith("its output is above")
    assert print_config.main(["nonsense", "1", "out"]) == 2
    assert "unknown recipe 'nonsense'" in capsys.readouterr().err


# --- build_tiny_model.sh, latest_checkpoint.sh -------------------------------------


def test_build_tiny_model_writes_a_loadable_model_with_the_project_tokens(tmp_path):
    result = run_script("build_tiny_model.sh", "nano_copy", "--size", "nano", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "nano_copy")
    assert AutoConfig.from_pretrained(tmp_path / "nano_copy").model_type == "qwen2"
    assert len(tokenizer.encode("<|planner|>", add_special_tokens=False)) == 1
    assert run_script("build_tiny_model.sh", cwd=tmp_path).returncode == 2  # no OUT_DIR: usage, nothing built


def test_latest_checkpoint_follows_the_tracker_not_the_folders(tmp_path):
    for step in (10, 20, 30):
        write_checkpoint(tmp_path / "run", step)
    (tmp_path / "run" / "latest_checkpointed_iteration.txt").write_text("20")  # step 30: a crash's leftover
    result = run_script("latest_checkpoint.sh", "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == os.path.join("run", "global_step_20")
    empty = run_script("latest_checkpoint.sh", tmp_path / "nothing", cwd=tmp_path)
    assert empty.returncode == 1 and "no complete checkpoint" in empty.stderr and empty.stdout == ""


def test_unseen_algorithmic_items_share_no_prompt_with_the_world_and_report_the_majority(tmp_path):
    """The larger held-out set for the easy tiers: no prompt of any trace (worked solutions
    included) or held-out item, and the majority answer on it as the demo computes it."""
    from afm_trainer.eval.scoring import majority_baseline
    from afm_trainer.suites.algorithmic import answers_by_type
    from afm_trainer.world.algorithmic import generate_suite, normalise
    from afm_trainer.world.make_world import make_world

    world = tmp_path / "world"
    make_world(str(world), n_train=150, n_heldout=110, worked_solutions_per_cell={1: 10, 2: 10, 3: 10})
    read = lambda path: [json.loads(line) for line in open(path)]  # noqa: E731
    used = {item["prompt"] for item in read(world / "heldout" / "algorithmic.jsonl")}
    for name in ("teacher_cot", "worked_solutions", "agent_chain"):
        used |= {str(r.get("question", r.get("task"))) for r in read(world / "traces" / f"{name}.jsonl")}
    # without the exclusion the same draw would repeat the world's prompts, so the test can fail
    assert {t.prompt for t in generate_suite(777, 12, difficulties=[1, 2, 3])} & used

    out = tmp_path / "unseen.jsonl"
    result = run_script("unseen_algorithmic_items.py", world, out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    items = read(out)
    assert len(items) > 11 * 3 * 6 and not {item["prompt"] for item in items} & used
    assert {item["difficulty"] for item in items} == {1, 2, 3}
    rows = [{**item, "gold": normalise(str(item["answer"]))} for item in items]
    majority = majority_baseline(answers_by_type(str(world)), rows, "type")["overall"]
    assert f"majority answer: {majority:.1%}" in result.stdout and 0 < majority < 1

    bad = run_script("unseen_algorithmic_items.py", tmp_path, out, cwd=tmp_path)
    assert bad.returncode == 2 and "is not a world folder" in bad.stderr
    for difficulties in ("1,x", "0,11"):
        bad = run_script("unseen_algorithmic_items.py", world, out, "--difficulties", difficulties, cwd=tmp_path)
        assert bad.returncode == 2 and "give difficulties 1-10 separated by commas" in bad.stderr
