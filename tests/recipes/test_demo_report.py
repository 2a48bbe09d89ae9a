"""The embedded demo's data wiring and report (afm_trainer/demo/), without training."""

import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from afm_trainer.demo import CONFIG_DIR, load_settings, report
from afm_trainer.demo import progressive as demo
from afm_trainer.eval.scoring import summarise
from afm_trainer.recipes.common import RecipeError
from afm_trainer.suites import get_suite
from afm_trainer.world.algorithmic import TYPES

SETTINGS = load_settings("progressive")
SUITE_DATA = {name: (get_suite(name).heldout_file, get_suite(name).group_key) for name in SETTINGS["eval"]["suites"]}


def _fake_stage(items, key, right):
    """Summary of a stage that answers the first `right` items of every group correctly."""
    seen, rows = {}, []
    for it in items:
        group = str(it[key])
        seen[group] = seen.get(group, 0) + 1
        correct = seen[group] <= right
        rows.append(
            {
                "id": it.get("id", it.get("qid")),
                key: it[key],
                "difficulty": it.get("difficulty", it.get("hops")),
                "gold": it["answer"].lower(),
                "predicted": it["answer"].lower() if correct else None,
                "correct": correct,
                "completion": "",
            }
        )
    return summarise(rows, key), rows


def test_report_compares_every_stage_with_the_majority_answer_by_difficulty(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from afm_trainer.world.make_world import make_world

    figures, savefig = {}, Figure.savefig

    def keep_figure(fig, path, **kwargs):  # so the plot's lines can be read back
        figures[os.path.basename(path)] = fig
        savefig(fig, path, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep_figure)

    out = tmp_path / "demo"
    paths = demo.embedded_paths(str(out))
    make_world(paths["world"], n_train=30, n_heldout=110, types_without_programs=["fibonacci", "two_sum"])
    chains = [json.loads(line) for line in open(os.path.join(paths["world"], "traces", "agent_chain.jsonl"))]
    assert {c["type"] for c in chains} == set(TYPES) - {"fibonacci", "two_sum"}
    heldout = {
        s: [json.loads(line) for line in open(os.path.join(paths["world"], "heldout", data))]
        for s, (data, _) in SUITE_DATA.items()
    }
    stages = {}
    for stage, right in (("untrained", 0), ("phase1_multiturn", 1)):
        stages[stage] = {}
        for suite, (_, key) in SUITE_DATA.items():
            summary, rows = _fake_stage(heldout[suite], key, right)
            stages[stage][suite] = summary
            if stage == "untrained":  # the baselines read the untrained stage's predictions
                os.makedirs(out / "eval" / stage / suite)
                with open(out / "eval" / stage / suite / "predictions.jsonl", "w") as f:
                    f.writelines(json.dumps(r) + "\n" for r in rows)
    report.write_report(str(out), stages, SETTINGS)
    text = (out / "report.md").read_text()
    assert "| difficulty | untrained | phase1_multiturn | majority answer | nearest training example |" in text
    assert "Easy tiers (difficulty 1, 2, 3): untrained 0.0%" in text
    results = json.load(open(out / "results.json"))
    nearest = results["nearest_example_baseline"]
    assert set(nearest) == {"algorithmic", "code", "qa"}
    for suite in nearest:  # the column shows the suite's own nearest-example accuracy by difficulty
        section = text.split(f"### {suite} by difficulty")[1].split("Easy tiers")[0]
        rows = [row.strip("|").split("|") for row in section.splitlines() if row[2:3].isdigit()]
        assert {cells[0].strip(): cells[-1].strip() for cells in rows} == {
            d: f"{accuracy:.1%}" for d, accuracy in nearest[suite]["by_difficulty"].items()
        }
        assert f"Baseline (nearest training example): {nearest[suite]['overall']:.1%}" in text
        easy = results["easy_tiers"][suite]["nearest training example"]
        assert (
            f"majority answer {results['easy_tiers'][suite]['majority answer']:.1%}, nearest training example {easy:.1%}"
            in text
        )
    # a baseline that matches or beats the final stage is said to, and only then
    for label, key in report.BASELINES.items():
        for suite in nearest:
            sentence = f"The {label} baseline ({results[key][suite]['overall']:.1%}) matches or beats the final stage"
            section = text.split(f"## {suite} by")[1].split("###")[0]
            beaten = results[key][suite]["overall"] >= stages["phase1_multiturn"][suite]["accuracy"]
            assert (sentence in section) == beaten, (label, suite)
    assert "The nearest training example baseline" in text.split("## code by")[1].split("###")[0]
    # every training program is a reference program, which passes wherever its type's spec is
    # nearest; a training answer is right only where another instance shares it; and no
    # program of a type the world wrote no chain for can be reused
    by_type = nearest["code"]["by_group"]
    assert by_type["fibonacci"] == by_type["two_sum"] == 0.0
    assert min(v for t, v in by_type.items() if t not in ("fibonacci", "two_sum")) > 0.8
    assert nearest["code"]["overall"] > nearest["algorithmic"]["overall"]
    programs = results["code_programs"]
    assert programs["nearest training example"]["not in training"] == 0.0
    assert programs["nearest training example"]["in training (recall)"] > 0.9
    assert programs["untrained"] == {"not in training": 0.0, "in training (recall)": 0.0}
    section = text.split("### code: programs in and not in the training set")[1].split("##")[0]
    assert "No training example holds a program for fibonacci, two_sum" in section
    assert "| not in training | 0.0% | 10.0% | 0.0% |" in section  # phase 1 is right on 1 item of 10 per type
    lines = {
        line.get_label(): line.get_linestyle() for line in figures["accuracy_by_difficulty.png"].axes[0].get_lines()
    }
    assert lines["majority answer"] == "--" and lines["nearest training example"] == ":"
    assert set(results["easy_tiers"]) == {"algorithmic", "code", "qa"}
    # code is the algorithmic set solved by a program: the same items, the same baseline
    assert results["majority_baseline"]["code"] == results["majority_baseline"]["algorithmic"]
    assert results["easy_tiers"]["algorithmic"]["untrained"] == 0.0
    assert 0 < results["easy_tiers"]["algorithmic"]["phase1_multiturn"] <= 1
    assert set(results["majority_baseline"]["algorithmic"]["by_difficulty"]) == {str(d) for d in range(1, 11)}
    assert (out / "accuracy_by_difficulty.png").stat().st_size > 0 and (out / "loss_curves.png").stat().st_size > 0


def test_later_phases_train_on_their_own_set_plus_replay_of_phase_one(tmp_path):
    paths = demo.embedded_paths(str(tmp_path))
    sources = demo.phase1_sets(paths)
    assert list(sources) == ["multiturn", "algorithmic", "code"]
    replay_rows = SETTINGS["data"]["replay_rows"]
    for name, path in sources.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(pa.table({"messages": [f"{name}-{i}" for i in range(max(replay_rows.values()) + 50)]}), path)
    demo.write_replay(sources, paths["replay"], replay_rows)
    for name in sources:
        rows = pq.read_table(os.path.join(paths["replay"], f"{name}.parquet")).column("messages").to_pylist()
        assert len(rows) == len(set(rows)) == replay_rows[name] and all(r.startswith(name) for r in rows)
    keys = demo.embedded_keys(paths, SETTINGS)
    assert keys["PHASE1_TRAIN_FILES"].split(",") == list(sources.values())
    assert keys["PHASE1_LR"] == str(SETTINGS["recipe"]["PHASE1_LR"])  # the settings file reaches the recipe
    for phase, own in ((2, "summary_only"), (3, "summary_prefix")):
        files = keys[f"PHASE{phase}_TRAIN_FILES"].split(",")
        assert files[0] == os.path.join(paths["data"], own, "train.parquet")
        assert files[1:] == [os.path.join(paths["replay"], f"{name}.parquet") for name in sources]


def phase0_settings() -> dict:
    """The demo's settings with phase 0 turned on as the settings file's comment says."""
    text = open(os.path.join(CONFIG_DIR, "progressive.yaml")).read()
    block = text.split("use these two settings:\n")[1].split("\nreasoning_stage: null")[0]
    extra = yaml.safe_load("\n".join(line[3:] for line in block.splitlines()))
    return {**SETTINGS, "reasoning_stage": extra["reasoning_stage"], "world": {**SETTINGS["world"], **extra["world"]}}


def test_phase0_is_off_by_default_and_when_on_comes_first_with_phase1_starting_from_it(tmp_path):
    from afm_trainer.recipes.chain.main import load_chain
    from tests.conftest import run_recipe

    chain = load_chain("progressive")
    assert demo.with_reasoning_stage(chain, SETTINGS) is chain
    assert "PHASE0_TRAIN_FILES" not in demo.embedded_keys(demo.embedded_paths(str(tmp_path)), SETTINGS)
    settings = phase0_settings()
    stages = demo.with_reasoning_stage(chain, settings).stages
    assert [s.key for s in stages] == ["PHASE0", "PHASE1", "PHASE2", "PHASE3"] and stages[1].start is None
    config = tmp_path / "phase0.yaml"
    config.write_text(yaml.safe_dump(settings))
    out = tmp_path / "out"
    dry = run_recipe("1", str(out), f"DEMO_CONFIG={config}", "DRY_RUN=1", recipe="train_progressive")
    assert dry.returncode == 0, dry.stderr[-2000:]
    commands = [line for line in dry.stdout.splitlines() if " command: " in line]
    assert [c.split("]")[0] for c in commands] == ["[phase 0", "[phase 1", "[phase 2", "[phase 3"]
    # phase 0 trains on the worked solutions and on phase 1's sets, repeated; phases 2 and 3
    # replay worked solutions beside phase 1's sets
    paths = demo.embedded_paths(str(out))
    repeats = settings["data"]["phase1_sets_in_reasoning_stage"]
    worked = os.path.join(paths["worked_solutions"], "train.parquet")
    phase0 = [worked] + list(demo.phase1_sets(paths).values()) * repeats
    assert repeats > 0 and f"data.train_files=[{','.join(phase0)}]" in commands[0]
    replay_worked = os.path.join(paths["replay"], "worked_solutions.parquet")
    assert all(replay_worked in command for command in commands[2:]) and replay_worked not in commands[1]
    assert f"model.path={out}/phase0_worked_solutions/global_step_LATEST/huggingface" in commands[1]
    assert not out.exists()  # a dry run builds nothing
    # settings copied before phase 0 mixed in phase 1's sets: one error line, not a KeyError
    older = {**settings, "data": {k: v for k, v in settings["data"].items() if k != "phase1_sets_in_reasoning_stage"}}
    with pytest.raises(RecipeError, match="needs data.phase1_sets_in_reasoning_stage"):
        demo.with_reasoning_stage(chain, older)
    # phase 0 without its data is one error line, before anything is written
    with pytest.raises(RecipeError, match="needs world.worked_solutions_per_cell"):
        demo.prepare(str(out), {**settings, "world": SETTINGS["world"]})
    assert not out.exists()


def test_coder_turns_become_code_examples_and_every_trace_is_accounted_for(tmp_path):
    """Approved Coder programs become (code prompt -> program) samples; a rejected or broken
    chain ends in the rejects file with its reason."""
    from afm_trainer.data.convert import convert
    from afm_trainer.world.algorithmic import code_prompt, make_task, solution_source
    from afm_trainer.world.teacher import agent_chain_record

    rng = random.Random(0)
    good = agent_chain_record(make_task(1, "fizzbuzz", 2, 0), rng)
    wrong = agent_chain_record(make_task(1, "rpn", 1, 0), rng, kind="wrong")  # the Reviewer rejected it
    broken = agent_chain_record(make_task(1, "fibonacci", 1, 0), rng)
    broken["trajectory"][1].pop("output")  # no Coder output
    chains = tmp_path / "agent_chain.jsonl"
    chains.write_text("".join(json.dumps(r) + "\n" for r in (good, wrong, broken)))
    turns = str(tmp_path / "coder_turns.jsonl")
    assert demo.write_coder_turns(str(chains), turns, per_type=16) == (3, 3)
    report = convert(turns, str(tmp_path / "code.parquet"), "teacher_cot", "multiturn", min_score=0.5)
    assert report["records_converted"] == 1 and report["records_rejected"] == 2
    messages = pq.read_table(tmp_path / "code.parquet").column("messages").to_pylist()[0]
    assert messages[0]["content"] == code_prompt(make_task(1, "fizzbuzz", 2, 0))
    assert messages[1]["content"] == f"<answer>{solution_source('fizzbuzz').strip()}</answer>"
    reasons = [json.loads(line)["reason"] for line in open(tmp_path / "code.parquet.rejects.jsonl")]
    assert any("below --min_score" in r for r in reasons) and any("answer" in r for r in reasons)


def test_dpo_demo_compares_dpo_with_sft_on_the_chosen_answers_item_by_item():
    from afm_trainer.demo.dpo import BASELINE, evaluation_lines, paired_change

    start = {"a": 0.5, "b": 0.25, "c": 1.0, "d": 0.0}
    after = {"a": 0.75, "b": 0.5, "c": 1.0, "d": 0.25}  # +0.25 on three items, +0 on one
    change, error = paired_change(start, after)
    assert change == 0.1875 and error == 0.0625  # the diffs' sample standard deviation 0.125 / sqrt(4)

    def model(by_item):
        return {"items": 4, "greedy": 1.0, "sampled": sum(by_item.values()) / 4, "sampled_by_item": by_item}

    settings = {"evaluation": {"temperature": 1.0, "sampled_answers": 4}}
    better = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}
    results = {"start (SFT)": model(start), "after DPO": model(after), BASELINE: model(better)}
    lines = "\n".join(evaluation_lines(results, settings))
    assert "after DPO minus start: +18.8%" in lines and "the baseline is better" in lines
    results[BASELINE] = model(after)
    assert "+0.0% (standard error 0.0%): within two standard errors" in "\n".join(evaluation_lines(results, settings))
