"""The nearest-training-example baseline: each held-out item gets the answer (or program) of
the training example whose prompt is nearest its own, scored as the suite scores a model."""

import json
import random

from afm_trainer.eval.scoring import nearest_example_baseline, nearest_examples
from afm_trainer.suites import get_suite
from afm_trainer.world.algorithmic import code_prompt, make_task, solution_source


def _item(task) -> dict:
    """A held-out algorithmic item, as make_world writes it."""
    return {
        "id": task.task_id,
        "prompt": task.prompt,
        "answer": task.answer,
        "type": task.type,
        "difficulty": task.difficulty,
        "x": task.x,
    }


def test_the_nearest_prompt_wins_ties_go_to_the_earlier_and_no_shared_token_gives_none():
    prompts = ["Evaluate the RPN expression: 8 7 * 2 -", "Evaluate the RPN expression: 2 3 +", "Is it a palindrome?"]
    queries = [
        "Evaluate the RPN expression: 3 2 +",
        "Evaluate the RPN expression: 8 7 * 1 -",
        "Is it a palindrome?",
        "xyzzy",
    ]
    assert nearest_examples(prompts, queries) == [1, 0, 2, None]
    # the digits and operators count: the search tool's tokenizer would drop them and tie these
    assert nearest_examples(["Evaluate: 1 2 +", "Evaluate: 4 5 *"], ["Evaluate: 4 5 +"]) == [1]
    assert nearest_examples(["red fox", "red fox", "blue"], ["red fox"]) == [0]
    assert nearest_examples([], ["red fox"]) == [None]


def test_answer_suites_reuse_the_nearest_training_answer():
    suite = get_suite("algorithmic")
    near_2 = {"id": "a", "prompt": "Evaluate the RPN expression: 2 3 +", "answer": "5", "type": "rpn", "difficulty": 1}
    near_8 = {
        "id": "b",
        "prompt": "Evaluate the RPN expression: 8 7 * 1 -",
        "answer": "55",
        "type": "rpn",
        "difficulty": 2,
    }
    examples = [
        ("Evaluate the RPN expression: 8 7 * 2 -", "54"),  # first: picking the first example fails the "5" item
        ("Evaluate the RPN expression: 2 3 +", "5"),
        ("Is 'a b b a' a palindrome?", "yes"),
    ]
    baseline = nearest_example_baseline(suite, examples, [near_2, near_8])
    assert baseline == {"overall": 0.5, "by_group": {"rpn": 0.5}, "by_difficulty": {"1": 1.0, "2": 0.0}}

    qa = get_suite("qa")  # a qa item's prompt is its question
    examples = [("Which company did Rakaur found?", "Danka Works"), ("Where was Kalofen born?", "Wynbel")]
    items = [
        {"qid": "q1", "question": "Where was Kalofen born?", "answer": "Wynbel", "hops": 1},
        {"qid": "q2", "question": "In which country was Rakaur born?", "answer": "Marven", "hops": 2},
    ]
    baseline = nearest_example_baseline(qa, examples, items)
    assert baseline == {"overall": 0.5, "by_group": {"1": 1.0, "2": 0.0}, "by_difficulty": {"1": 1.0, "2": 0.0}}


def test_code_suite_runs_the_nearest_training_program_on_the_items_input():
    suite = get_suite("code")
    buggy_rpn = solution_source("rpn").replace("return", "return 1 + 0 *", 1)  # the Reviewer's rejected kind
    examples = [
        (code_prompt(make_task(1, "rpn", 1, 0)), buggy_rpn),
        (code_prompt(make_task(1, "fizzbuzz", 2, 0)), solution_source("fizzbuzz")),
    ]
    items = [_item(make_task(999, "fizzbuzz", 3, 0)), _item(make_task(999, "rpn", 2, 0))]
    assert items[1]["answer"] != "1"  # the buggy program's answer would be right by luck
    baseline = nearest_example_baseline(suite, examples, items)
    assert baseline["by_group"] == {"fizzbuzz": 1.0, "rpn": 0.0}
    assert baseline["overall"] == 0.5 and baseline["by_difficulty"] == {"2": 0.0, "3": 1.0}


def test_training_examples_are_the_kept_traces_of_the_world(tmp_path):
    from afm_trainer.world.teacher import agent_chain_record

    traces = tmp_path / "traces"
    traces.mkdir()
    rng = random.Random(0)
    fizzbuzz = make_task(1, "fizzbuzz", 2, 0)
    chains = [
        agent_chain_record(fizzbuzz, rng),
        agent_chain_record(make_task(1, "rpn", 1, 0), rng, kind="wrong"),  # scored 0: not trained on
        agent_chain_record(make_task(1, "fibonacci", 1, 0), rng),
    ]
    chains[2]["trajectory"][1].pop("output")  # no Coder program
    (traces / "agent_chain.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chains))
    code = get_suite("code").training_examples(str(tmp_path), 0.5)
    assert code == [(code_prompt(fizzbuzz), solution_source("fizzbuzz"))]
    assert len(get_suite("code").training_examples(str(tmp_path), None)) == 2

    cot = [
        {"question": "Evaluate the RPN expression: 2 3 +", "answer": "5", "score": 1.0, "type": "rpn"},
        {"question": "Evaluate the RPN expression: 8 7 +", "answer": "17", "score": 0.0, "type": "rpn"},
        {"answer": "3", "score": 1.0, "type": "rpn"},  # malformed: no question
    ]
    (traces / "teacher_cot.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cot))
    assert get_suite("algorithmic").training_examples(str(tmp_path), 0.5) == [
        ("Evaluate the RPN expression: 2 3 +", "5")
    ]
