"""python -m afm_trainer.eval and its scoring."""

import json
import subprocess
import sys

from afm_trainer.eval.scoring import majority_baseline, summarise
from afm_trainer.suites.code import score_completion as code_row
from afm_trainer.world.algorithmic import code_example, code_prompt, make_task, solution_source


def test_collapse_to_one_answer_is_visible_in_the_label_distribution():
    rows = [
        {"type": "parentheses", "difficulty": 1, "gold": g, "predicted": "no", "correct": g == "no"}
        for g in ["yes"] * 6 + ["no"] * 4
    ]
    summary = summarise(rows, "type")
    assert summary["accuracy"] == 0.4 and summary["format_valid"] == 1.0
    assert summary["label_distribution"]["gold"] == {"yes": 6, "no": 4}
    assert (
        summary["label_distribution"]["predicted"]["no"] == 10
        and summary["label_distribution"]["predicted"]["yes"] == 0
    )


def test_majority_baseline_uses_the_training_majority_per_group():
    rows = [
        {"type": "t", "difficulty": 1, "gold": "yes"},
        {"type": "t", "difficulty": 2, "gold": "no"},
        {"type": "u", "difficulty": 1, "gold": "3"},
    ]
    baseline = majority_baseline({"t": ["yes", "yes", "no"], "u": ["4"]}, rows, "type")
    assert baseline == {"overall": 1 / 3, "by_difficulty": {"1": 0.5, "2": 0.0}}


def test_code_suite_runs_the_program_on_the_items_input_and_hides_its_answer():
    task = make_task(999, "two_sum", 3, 0)
    prompt = code_prompt(code_example(task))
    assert str(task.x[0]) not in prompt  # the prompt's example is another instance
    right = code_row(task, f"<answer>{solution_source('two_sum')}</answer>")
    assert right["correct"] and right["predicted"] == task.answer
    # a program that returns the example's answer fails on the item itself
    example_answer = code_example(task).answer
    copied = code_row(task, f"<answer>def solve(x):\n    return {example_answer!r}</answer>")
    assert not copied["correct"]
    assert code_row(task, "<answer>def solve(x):\n    raise ValueError</answer>")["predicted"] is None
    assert code_row(task, "no program here")["predicted"] is None and not code_row(task, "no program here")["correct"]


def test_eval_cli_on_every_suite(tmp_path, nano_model):
    from afm_trainer.world.make_world import make_world

    world = tmp_path / "world"
    make_world(str(world), n_train=20, n_heldout=110)
    for suite, data, n in (
        ("algorithmic", "algorithmic.jsonl", 110),
        ("code", "algorithmic.jsonl", 110),
        ("qa", "qa.jsonl", 110),
    ):
        out = tmp_path / f"eval_{suite}"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "afm_trainer.eval",
                "--model",
                nano_model,
                "--suite",
                suite,
                "--data",
                str(world / "heldout" / data),
                "--out",
                str(out),
                "--max_new_tokens",
                "8",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        results = json.load(open(out / "results.json"))
        assert results["n"] == n and 0 <= results["accuracy"] <= 1
        assert sum(1 for _ in open(out / "predictions.jsonl")) == n
        assert f"{suite}: accuracy" in result.stdout


def test_greedy_decode_matches_generate_while_dropping_finished_rows(nano_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from afm_trainer.eval.lm import greedy_decode

    model = AutoModelForCausalLM.from_pretrained(nano_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(nano_model)
    tokenizer.padding_side = "left"
    texts = ["the river city", "a", "mayor wrote code to test each plan before the reviewer", "score of 7 and"]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    reference = model.generate(
        **batch,
        max_new_tokens=12,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )[:, batch["input_ids"].shape[1] :]
    # Stop tokens that some rows meet early and others never, so rows leave at different steps.
    first_tokens = reference[:, 2].tolist()
    stop_ids = [tokenizer.eos_token_id, first_tokens[0], first_tokens[2]]
    reference = model.generate(
        **batch, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids
    )[:, batch["input_ids"].shape[1] :]
    ours = greedy_decode(model, batch["input_ids"], batch["attention_mask"], 12, stop_ids)
    lengths = {len(row) for row in ours}
    assert len(lengths) > 1 and min(lengths) < 12  # some rows really stopped early
    for row, expected in zip(ours, reference.tolist()):
        assert row == expected[: len(row)]
        assert all(t == tokenizer.pad_token_id for t in expected[len(row) :])  # generate() only padded after the stop


def test_qa_held_out_items_with_aliases_accept_any_of_them():
    from afm_trainer.suites.qa import score as qa_row

    plain = {"qid": "q1", "hops": 1, "answer": "Kafen"}
    assert qa_row(plain, "<answer>kafen</answer>")["correct"]
    assert not qa_row(plain, "<answer>Velmora</answer>")["correct"]
    for item in (
        {"qid": "q2", "hops": 1, "golden_answers": ["Jane Austen", "Austen"]},
        {"qid": "q3", "hops": 1, "answer": ["Jane Austen", "Austen"]},
    ):
        row = qa_row(item, "<search>Pride and Prejudice</search><answer>Austen.</answer>")
        assert row["correct"] and row["gold"] == "jane austen" and row["predicted"] == "austen", row
        assert not qa_row(item, "<answer>Charlotte Bronte</answer>")["correct"]
