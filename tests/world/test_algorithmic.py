"""The algorithmic suite: deterministic, held-out never trained, verifiers that can fail."""

import json

import pytest

from afm_trainer.tools.sandbox import run_python
from afm_trainer.world.algorithmic import (
    DIFFICULTIES,
    TYPES,
    generate_suite,
    make_task,
    solution_source,
    verify,
    worked_solution,
)


def test_suite_is_deterministic_and_covers_every_type_and_difficulty():
    a, b = generate_suite(42, 2), generate_suite(42, 2)
    assert [t.prompt for t in a] == [t.prompt for t in b]
    assert {(t.type, t.difficulty) for t in a} == {(t, d) for t in TYPES for d in DIFFICULTIES}


def test_no_held_out_instance_appears_in_training_data():
    held_out = generate_suite(999, 5)
    train = generate_suite(42, 30, exclude={t.prompt for t in held_out})
    assert not {t.prompt for t in held_out} & {t.prompt for t in train}


def test_reference_answers_pass_and_perturbed_answers_fail():
    for task in generate_suite(7, 3):
        assert verify(task, task.answer), task
        assert verify(task, f"  {task.answer}. "), task  # spacing and a final period are forgiven
        wrong = {"yes": "no", "no": "yes"}.get(task.answer) or (task.answer + "1")
        assert not verify(task, wrong), task
        assert not verify(task, None) and not verify(task, "")


def test_two_sum_accepts_any_valid_pair():
    task = make_task(1, "two_sum", 3, 0)
    values, target = task.x
    pairs = [
        f"{i} {j}" for i in range(len(values)) for j in range(len(values)) if i != j and values[i] + values[j] == target
    ]
    assert pairs and all(verify(task, p) for p in pairs)
    assert not verify(task, "0 0")


@pytest.mark.parametrize("task_type", TYPES)
def test_reference_solution_passes_its_tests_in_the_sandbox(task_type):
    cases = [make_task(3, task_type, d, 0) for d in (1, 5, 10)]
    program = (
        solution_source(task_type)
        + "\nimport json\n"
        + "\n".join(f"print(json.dumps(str(solve({t.x!r}))))" for t in cases)
    )
    result = run_python(program, timeout_s=10)
    assert result.status == "ok", result.stderr
    outputs = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(verify(t, out) for t, out in zip(cases, outputs))


def _checked_steps(task, text):
    """The final value the worked solution arrives at, with every arithmetic step
    ("a+b=c", "a*b=c") re-computed on the way."""
    import re

    for a, op, b, c in re.findall(r"(-?\d+)([-+*])(-?\d+)=(-?\d+)", text):
        a, b, c = int(a), int(b), int(c)
        assert c == (a + b if op == "+" else a - b if op == "-" else a * b), (task, text)
    if task.type == "reverse_string":
        return text.split("Backwards: ")[1].rstrip(".").replace(" ", "")
    if task.type == "arithmetic":
        return text.rsplit("= ", 1)[-1]
    last = re.split(r"(?:So|Kept:|found at|absent,|=|: |\. )\s*", text.strip().rstrip("."))[-1]
    return last


def test_worked_solutions_are_correct_steps_ending_in_the_answer():
    for task in generate_suite(11, 3):
        text = worked_solution(task)
        assert verify(task, _checked_steps(task, text)), (task, text)


def test_letters_are_spaced_in_prompts_reasoning_and_answers():
    """A letter is then one token wherever it appears (inside a word the tokenizer merges
    it with its neighbours); a program's unspaced output is right as well."""
    task = make_task(0, "reverse_string", 2, 0)
    letters = task.x
    assert task.prompt.endswith(" ".join(letters)) and task.answer == " ".join(reversed(letters))
    assert worked_solution(task) == f"Backwards: {task.answer}."
    assert verify(task, letters[::-1]) and verify(task, task.answer)
    assert not verify(task, letters) and not verify(task, letters[::-1][:-1])
    palindrome = make_task(0, "is_palindrome", 3, 0)
    assert palindrome.prompt.endswith(" ".join(palindrome.x))


def test_fizzbuzz_reasoning_uses_the_digit_sum_and_the_last_digit():
    assert worked_solution(make_task(0, "fizzbuzz", 1, 0)).startswith("Digit")
    task = next(t for t in generate_suite(0, 10, types=["fizzbuzz"], difficulties=[3]) if t.x > 9)
    digits = str(task.x)
    text = worked_solution(task)
    assert f"Digits {digits[0]}+{digits[1]}={int(digits[0]) + int(digits[1])}" in text
    assert f"Last digit {digits[-1]}" in text and text.endswith(f"So {task.answer}.")
