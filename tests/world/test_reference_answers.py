"""The algorithmic world's reference answers, checked against something other than themselves.

``make_task`` stores ``str(solve(x))`` and the sandbox later runs the same ``solve``, so a wrong
reference solver would agree with itself everywhere. Here the answers are checked two other ways:

- hand-computed cases: inputs and answers worked out by hand and written literally, in the
  shapes ``Task.x`` and ``Task.answer`` take;
- independent checkers: a second, differently built solution per type (brute force where it is
  cheap), written here without calling the module's solvers, run on generated suites over every
  difficulty. Each checker is also held to the hand-computed cases, so it is not trusted blindly.
"""

import operator
import re

import pytest

from afm_trainer.world.algorithmic import DIFFICULTIES, PROBLEM_TYPES, TYPES, Task, generate_suite, verify

SEEDS = (0, 2024)
PER_CELL = 10

# --- hand-computed cases: (x, answer text) per type ---

HAND_CASES = {
    "rpn": [
        (["3", "4", "+", "2", "*"], "14"),  # (3+4)*2
        (["5", "9", "-"], "-4"),  # operand order: 5-9, not 9-5
        (["6", "2", "-", "3", "-"], "1"),  # (6-2)-3
        (["1", "9", "-", "8", "*"], "-64"),  # (1-9)*8
        (["2", "3", "4", "*", "-"], "-10"),  # 2-(3*4)
    ],
    "arithmetic": [
        ("2+3*4", "14"),  # * before +
        ("(2+3)*4", "20"),
        ("8-3-2", "3"),  # left to right: (8-3)-2
        ("9-2*3+1", "4"),
        ("1-(2-3)", "2"),
        ("2*(3-(4+5))", "-12"),  # nested brackets
        ("((1+2)*(3-4))*5", "-15"),
    ],
    "parentheses": [
        ("([]{})", "yes"),
        ("{[()()]}", "yes"),
        ("([)]", "no"),  # every count balanced, but interleaved
        ("((", "no"),  # left open
        (")(", "no"),  # closed before opened
        ("())", "no"),
        ("(]", "no"),  # wrong kind
    ],
    "fizzbuzz": [
        (15, "FizzBuzz"),
        (150, "FizzBuzz"),
        (9, "Fizz"),
        (10, "Buzz"),
        (7, "7"),
        (1, "1"),
    ],
    "reverse_string": [
        ("abc", "c b a"),
        ("hello", "o l l e h"),
        ("aab", "b a a"),
        ("racecar", "r a c e c a r"),
    ],
    "is_palindrome": [
        ("aba", "yes"),
        ("abba", "yes"),
        ("abcba", "yes"),
        ("abca", "no"),
        ("aab", "no"),
        ("ab", "no"),
    ],
    "fibonacci": [
        (0, "0"),
        (1, "1"),
        (2, "1"),
        (10, "55"),
        (20, "6765"),
        (32, "2178309"),  # the largest n the generator draws (3*10+2)
    ],
    "binary_search": [
        (([1, 3, 5, 7, 9], 7), "3"),
        (([2, 4, 6], 2), "0"),  # first
        (([2, 4, 6], 6), "2"),  # last
        (([1, 3, 5, 7, 9], 4), "-1"),  # absent, between values
        (([0, 10, 20, 30], 35), "-1"),  # absent, past the end
        (([5, 6, 7], 0), "-1"),  # absent, before the start
    ],
    "max_subarray": [
        ([-2, 1, -3, 4, -1, 2, 1, -5, 4], "6"),  # 4-1+2+1
        ([-3, -1, -2], "-1"),  # all negative: the best single value
        ([5], "5"),
        ([2, -1, 2], "3"),  # crossing a negative pays
        ([0, -1, 0], "0"),
        ([-9, 9, -9], "9"),
    ],
    "remove_duplicates": [
        ([1, 2, 1, 3, 2], "1 2 3"),
        ([4, 4, 4], "4"),
        ([3, 1, 2], "3 1 2"),
        ([2, 1, 2, 1, 3], "2 1 3"),  # first occurrences, not sorted
    ],
}

# two_sum: (x, every right answer); any right pair is accepted.
TWO_SUM_HAND_CASES = [
    (([2, 7, 11, 15], 9), {"0 1"}),
    (([3, 3], 6), {"0 1"}),  # equal values at distinct indices
    (([1, 5, 2, 4], 6), {"0 1", "2 3"}),
    (([3, 1, 5, 3], 6), {"0 3", "1 2"}),
    (([3, 1, 4], 6), {"none"}),  # 3+3 would need index 0 twice
    (([1, 2, 3], 100), {"none"}),
]


# --- independent checkers: x -> answer text, none calling the module's solvers ---

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _check_rpn(tokens):
    """A stack machine over an operator table; the expression must leave exactly one value."""
    stack = []
    for token in tokens:
        if token in _OPS:
            right, left = stack.pop(), stack.pop()
            stack.append(_OPS[token](left, right))
        else:
            stack.append(int(token))
    assert len(stack) == 1, tokens
    return str(stack[0])


def _check_arithmetic(expression):
    """Recursive descent: expr = term {(+|-) term}, term = factor {* factor}, factor = int | (expr)."""
    tokens = re.findall(r"\d+|[-+*()]", expression)
    assert "".join(tokens) == expression, expression  # nothing but ints, + - * and brackets
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def expr():
        value = term()
        while peek() in ("+", "-"):
            value = _OPS[take()](value, term())
        return value

    def term():
        value = factor()
        while peek() == "*":
            take()
            value *= factor()
        return value

    def factor():
        token = take()
        if token == "(":
            value = expr()
            assert take() == ")", expression
            return value
        return int(token)

    value = expr()
    assert pos == len(tokens), expression
    return str(value)


def _check_parentheses(text):
    """Delete adjacent matched pairs until none is left: balanced iff nothing remains."""
    while True:
        shorter = text.replace("()", "").replace("[]", "").replace("{}", "")
        if shorter == text:
            return "yes" if text == "" else "no"
        text = shorter


def _check_fizzbuzz(n):
    words = ("Fizz" if n % 3 == 0 else "") + ("Buzz" if n % 5 == 0 else "")
    return words or str(n)


def _check_reverse_string(text):
    return " ".join(reversed(text))  # answers write letters spaced, as the prompts do


def _check_is_palindrome(text):
    mirrored = all(text[i] == text[len(text) - 1 - i] for i in range(len(text) // 2))
    return "yes" if mirrored else "no"


def _check_fibonacci(n):
    sequence = [0, 1]
    while len(sequence) <= n:
        sequence.append(sequence[-1] + sequence[-2])
    return str(sequence[n])


def _check_binary_search(x):
    values, target = x
    assert values == sorted(set(values)), x  # binary search needs sorted, distinct values
    return str(values.index(target)) if target in values else "-1"


def _check_max_subarray(values):
    n = len(values)
    return str(max(sum(values[i:j]) for i in range(n) for j in range(i + 1, n + 1)))


def _check_remove_duplicates(values):
    return " ".join(map(str, dict.fromkeys(values)))


def _two_sum_pairs(x):
    """Every right answer "i j" (i < j) by trying all index pairs, or {"none"}."""
    values, target = x
    n = len(values)
    pairs = {f"{i} {j}" for i in range(n) for j in range(i + 1, n) if values[i] + values[j] == target}
    return pairs or {"none"}


CHECKERS = {
    "rpn": _check_rpn,
    "arithmetic": _check_arithmetic,
    "parentheses": _check_parentheses,
    "fizzbuzz": _check_fizzbuzz,
    "reverse_string": _check_reverse_string,
    "is_palindrome": _check_is_palindrome,
    "fibonacci": _check_fibonacci,
    "binary_search": _check_binary_search,
    "max_subarray": _check_max_subarray,
    "remove_duplicates": _check_remove_duplicates,
}


def _hand_task(task_type, x, answer):
    return Task(f"hand-{task_type}", task_type, 1, f"hand case {x!r}", answer, x)


@pytest.fixture(scope="module")
def suite():
    return [task for seed in SEEDS for task in generate_suite(seed, PER_CELL, difficulties=DIFFICULTIES)]


def test_every_type_has_hand_cases_and_a_checker(suite):
    assert set(TYPES) == set(CHECKERS) | {"two_sum"}
    assert set(HAND_CASES) == set(CHECKERS)
    assert all(len(cases) >= 3 for cases in HAND_CASES.values())
    assert len(TWO_SUM_HAND_CASES) >= 3
    assert {(t.type, t.difficulty) for t in suite} == {(t, d) for t in TYPES for d in DIFFICULTIES}


@pytest.mark.parametrize("task_type", sorted(HAND_CASES))
def test_hand_computed_cases(task_type):
    solve, check = PROBLEM_TYPES[task_type].solve, CHECKERS[task_type]
    for x, answer in HAND_CASES[task_type]:
        assert PROBLEM_TYPES[task_type].show(solve(x)) == answer, (task_type, x)
        assert check(x) == answer, (task_type, x)  # the checker is held to the hand answers too
        assert verify(_hand_task(task_type, x, answer), answer), (task_type, x)


def test_hand_computed_two_sum_cases():
    solve = PROBLEM_TYPES["two_sum"].solve
    for x, answers in TWO_SUM_HAND_CASES:
        assert solve(x) in answers, x
        assert _two_sum_pairs(x) == answers, x
        task = _hand_task("two_sum", x, solve(x))
        assert all(verify(task, answer) for answer in answers), x
    task = _hand_task("two_sum", ([3, 1, 5, 3], 6), "1 2")
    assert not verify(task, "0 0")  # 3+3 with one index twice is not a pair
    assert not verify(task, "0 1")  # 3+1 is not 6


@pytest.mark.parametrize("task_type", sorted(CHECKERS))
def test_suite_answers_agree_with_independent_checker(suite, task_type):
    check = CHECKERS[task_type]
    disagreements = [
        (t.difficulty, t.x, t.answer, check(t.x))
        for t in suite
        if t.type == task_type and (t.answer != check(t.x) or not verify(t, check(t.x)))
    ]
    assert not disagreements, f"{task_type}: (difficulty, x, stored answer, independent answer): {disagreements}"


def test_suite_two_sum_answers_are_real_pairs(suite):
    wrong = []
    for task in suite:
        if task.type != "two_sum":
            continue
        values, target = task.x
        answers = _two_sum_pairs(task.x)
        pair = re.fullmatch(r"(\d+) (\d+)", task.answer)
        if answers == {"none"}:
            right = task.answer == "none"
        elif pair:
            i, j = map(int, pair.groups())
            right = i != j and max(i, j) < len(values) and values[i] + values[j] == target
            right = right and f"{min(i, j)} {max(i, j)}" in answers
        else:
            right = False  # "none" (or anything else) although a pair exists
        if not right or not all(verify(task, answer) for answer in answers):
            wrong.append((task.difficulty, task.x, task.answer, sorted(answers)))
    assert not wrong, f"two_sum: (difficulty, x, stored answer, every right answer): {wrong}"
