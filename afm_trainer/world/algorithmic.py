"""The algorithmic problems of seed 003: 11 problem types at difficulty 1..10.

A problem type is one unit (``ProblemType``): a generator of instances, the reference
solution ``solve(x)`` (whose source the scripted Coder writes and the Reviewer runs in
the sandbox), the teacher's worked solution (small steps a tiny student can follow), the
spec of ``solve(x)`` the code suite shows, and optionally its own verifier. Adding a type
is one block below ending in ``register(ProblemType(...))``.

Every instance is generated from (seed, type, difficulty, index), so a suite is the same
on every machine; training and held-out suites use different seeds, and
``generate_suite(..., exclude=...)`` drops any prompt of the held-out suite from a
training suite, so no held-out instance is ever trained on.
"""

from __future__ import annotations

import inspect
import json
import random
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

DIFFICULTIES = list(range(1, 11))
YES_NO_TYPES = {"parentheses", "is_palindrome"}


@dataclass
class Task:
    task_id: str
    type: str
    difficulty: int
    prompt: str
    answer: str
    x: object = field(repr=False)  # the input solve() takes


@dataclass(frozen=True)
class ProblemType:
    name: str
    solve: Callable  # x -> the answer (reference solution; its source is the Coder's code)
    generate: Callable  # (rng, difficulty) -> (x, prompt); input size grows with difficulty
    work: Callable  # x -> the teacher's reasoning, one short step after another
    code_spec: str  # what solve(x) takes and returns (the code suite's prompt)
    verify: Callable | None = None  # (task, text) -> bool; default: the normalised answer
    show: Callable = str  # solve(x)'s value -> the answer as the prompt's notation writes it


PROBLEM_TYPES: dict[str, ProblemType] = {}


def register(problem_type: ProblemType) -> ProblemType:
    PROBLEM_TYPES[problem_type.name] = problem_type
    return problem_type


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip(".")).lower()


def _letters(rng, n, alphabet="abcde"):
    return "".join(rng.choice(alphabet) for _ in range(n))


# Letters spaced apart, in prompts, reasoning and answers alike: a letter is then the same
# single token wherever it appears, where inside a word the tokenizer merges it with its
# neighbours ("vaew" is "va" "ew") and a small student would have to learn every spelling.
def _spaced(text):
    return " ".join(text)


def _same_letters(task, text):
    """The reference's letters in order, spaced or not ("w e a v" and "weav" alike)."""
    return normalise(text).replace(" ", "") == normalise(task.answer).replace(" ", "")


# --- rpn ---


def solve_rpn(tokens):
    stack = []
    for token in tokens:
        if token in "+-*":
            b, a = stack.pop(), stack.pop()
            stack.append(a + b if token == "+" else a - b if token == "-" else a * b)
        else:
            stack.append(int(token))
    return stack[0]


def _gen_rpn(rng, d):
    tokens, _depth = [str(rng.randint(1, 9))], 1
    for _ in range(d):
        tokens.append(str(rng.randint(1, 9)))
        tokens.append(rng.choice("+-*"))
    return tokens, f"Evaluate the RPN expression: {' '.join(tokens)}"


def _work_rpn(tokens):
    stack, steps = [], []
    for token in tokens:
        if token in "+-*":
            b, a = stack.pop(), stack.pop()
            value = a + b if token == "+" else a - b if token == "-" else a * b
            steps.append(f"{a}{token}{b}={value}")
            stack.append(value)
        else:
            stack.append(int(token))
    return ". ".join(steps) + "."


register(
    ProblemType(
        "rpn",
        solve_rpn,
        _gen_rpn,
        _work_rpn,
        "x is a list of tokens (strings) of a reverse Polish notation expression over integers with + - *; return its value as an int.",
    )
)


# --- arithmetic ---


# The expressions are Python syntax (ints, + - *, brackets, usual precedence), so Python's
# own parser evaluates them, as seed 003's teacher did. Short code matters: the student of
# the code suite writes it token by token (a hand-written parser was 280 tokens, this 30).
def solve_arithmetic(expression):
    return eval(expression, {"__builtins__": {}})


def _gen_arithmetic(rng, d):
    def expr(size):
        if size <= 1:
            return str(rng.randint(1, 9))
        left = rng.randint(1, size - 1)
        text = f"{expr(left)}{rng.choice('+-*')}{expr(size - left)}"
        return f"({text})" if rng.random() < 0.3 else text

    expression = expr(d + 1)
    return expression, f"Compute: {expression}"


def _work_arithmetic(expression):
    """Rewrite the expression one operation at a time: innermost brackets first,
    then * before + and -, left to right."""
    token = re.compile(r"\d+|[-+*()]")
    items = token.findall(expression)
    lines = []

    def reduce_once(seq):
        for i in range(1, len(seq) - 1):
            if seq[i] == "*":
                return seq[: i - 1] + [str(int(seq[i - 1]) * int(seq[i + 1]))] + seq[i + 2 :]
        op, a, b = seq[1], int(seq[0]), int(seq[2])
        return [str(a + b if op == "+" else a - b)] + seq[3:]

    while len(items) > 1:
        if "(" in items:
            close = items.index(")")
            open_ = max(i for i in range(close) if items[i] == "(")
            inner = reduce_once(items[open_ + 1 : close])
            if len(inner) == 1:  # a bracket holding one number goes away in the same step
                items = items[:open_] + inner + items[close + 1 :]
            else:
                items = items[: open_ + 1] + inner + items[close:]
        else:
            items = reduce_once(items)
        lines.append("".join(items))
    return " = ".join([expression] + lines)


register(
    ProblemType(
        "arithmetic",
        solve_arithmetic,
        _gen_arithmetic,
        _work_arithmetic,
        "x is a string expression of integers with + - * and brackets (usual precedence); return its value as an int.",
    )
)


# --- parentheses ---


def solve_parentheses(text):
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for ch in text:
        if ch in "([{":
            stack.append(ch)
        elif not stack or stack.pop() != pairs[ch]:
            return "no"
    return "yes" if not stack else "no"


def _gen_parentheses(rng, d):
    n = 2 * d
    stack, out = [], []
    for _ in range(n):
        if stack and rng.random() < 0.5:
            out.append({"(": ")", "[": "]", "{": "}"}[stack.pop()])
        else:
            ch = rng.choice("([{")
            stack.append(ch)
            out.append(ch)
    out += [{"(": ")", "[": "]", "{": "}"}[c] for c in reversed(stack)]
    if rng.random() < 0.5:  # half of them broken
        i = rng.randrange(len(out))
        out[i] = rng.choice([c for c in "()[]{}" if c != out[i]])
    text = "".join(out)
    return text, f"Are the brackets balanced? {text}"


def _work_parentheses(text):
    """After each bracket, what is still open ("-" for nothing)."""
    pairs, stack, steps = {")": "(", "]": "[", "}": "{"}, [], []
    for ch in text:
        if ch in "([{":
            stack.append(ch)
        elif not stack or stack[-1] != pairs[ch]:
            return " ".join(steps + [f"{ch}:mismatch"]) + ". no."
        else:
            stack.pop()
        steps.append(f"{ch}:{''.join(stack) or '-'}")
    return " ".join(steps) + (". yes." if not stack else ". open left. no.")


register(
    ProblemType(
        "parentheses",
        solve_parentheses,
        _gen_parentheses,
        _work_parentheses,
        'x is a string of brackets ()[]{}; return "yes" if they are balanced, else "no".',
    )
)


# --- fizzbuzz ---


def solve_fizzbuzz(n):
    return "FizzBuzz" if n % 15 == 0 else "Fizz" if n % 3 == 0 else "Buzz" if n % 5 == 0 else str(n)


def _gen_fizzbuzz(rng, d):
    n = rng.randint(1, 15 * d)
    return n, f"FizzBuzz of {n}?"


def _work_fizzbuzz(n):
    """Divisibility by the digits: 3 divides n when it divides n's digit sum, 5 when the
    last digit is 0 or 5 (a small student knows sums and remainders of small numbers, not
    of every n)."""
    digits = str(n)
    total = sum(map(int, digits))
    by3 = f"Digits {'+'.join(digits)}={total}" if len(digits) > 1 else f"Digit {total}"
    three = "3 divides" if total % 3 == 0 else "3 does not divide"
    five = "5 divides" if digits[-1] in "05" else "5 does not divide"
    return f"{by3}, {total} mod 3 = {total % 3}: {three}. Last digit {digits[-1]}: {five}. So {solve_fizzbuzz(n)}."


register(
    ProblemType(
        "fizzbuzz",
        solve_fizzbuzz,
        _gen_fizzbuzz,
        _work_fizzbuzz,
        'x is a positive int; return "FizzBuzz" if 15 divides it, "Fizz" if 3 does, "Buzz" if 5 does, else str(x).',
    )
)


# --- reverse_string ---


def solve_reverse_string(text):
    return text[::-1]


def _gen_reverse_string(rng, d):
    text = _letters(rng, d + 2, "abcdefghijklmnopqrstuvwxyz")
    return text, f"Reverse the string: {_spaced(text)}"


def _work_reverse_string(text):
    return f"Backwards: {_spaced(text[::-1])}."


register(
    ProblemType(
        "reverse_string",
        solve_reverse_string,
        _gen_reverse_string,
        _work_reverse_string,
        "x is a string; return it reversed.",
        verify=_same_letters,
        show=_spaced,
    )
)


# --- is_palindrome ---


def solve_is_palindrome(text):
    return "yes" if text == text[::-1] else "no"


def _gen_is_palindrome(rng, d):
    half = _letters(rng, (d + 3) // 2)
    text = half + half[::-1][d % 2 :] if rng.random() < 0.5 else _letters(rng, d + 2)
    return text, f"Is it a palindrome? {_spaced(text)}"


def _work_is_palindrome(text):
    same = text == text[::-1]
    return f"Letters: {_spaced(text)}. Backwards: {_spaced(text[::-1])}. {'Same' if same else 'Different'}: {'yes' if same else 'no'}."


register(
    ProblemType(
        "is_palindrome",
        solve_is_palindrome,
        _gen_is_palindrome,
        _work_is_palindrome,
        'x is a string; return "yes" if it reads the same backwards, else "no".',
    )
)


# --- fibonacci ---


def solve_fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def _gen_fibonacci(rng, d):
    n = rng.randint(0, 3 * d + 2)
    return n, f"Fibonacci number F({n})?"


def _work_fibonacci(n):
    """Each term with its index, so the student sees when it has reached F(n)."""
    a, b, terms = 0, 1, []
    for i in range(n + 1):
        terms.append(f"F({i})={a}")
        a, b = b, a + b
    return ". ".join(terms) + "."


register(
    ProblemType(
        "fibonacci",
        solve_fibonacci,
        _gen_fibonacci,
        _work_fibonacci,
        "x is an int n >= 0; return F(n), where F(0) = 0 and F(1) = 1.",
    )
)


# --- binary_search ---


def solve_binary_search(x):
    values, target = x
    lo, hi = 0, len(values) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if values[mid] == target:
            return mid
        if values[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1


def _gen_binary_search(rng, d):
    values = sorted(rng.sample(range(10 * d + 10), d + 3))
    target = rng.choice(values) if rng.random() < 0.7 else rng.randrange(10 * d + 10)
    return (values, target), f"Index of {target} in {values} (-1 if absent)?"


def _work_binary_search(x):
    values, target = x
    lo, hi = 0, len(values) - 1
    # each value with its index first: values[mid] is then read off, not counted out
    steps = ["Indexed: " + " ".join(f"{i}:{v}" for i, v in enumerate(values))]
    while lo <= hi:
        mid = (lo + hi) // 2
        if values[mid] == target:
            steps.append(f"lo={lo} hi={hi} mid={mid}: {values[mid]}={target}, found at {mid}")
            return ". ".join(steps) + "."
        sign = "<" if values[mid] < target else ">"
        steps.append(f"lo={lo} hi={hi} mid={mid}: {values[mid]}{sign}{target}")
        lo, hi = (mid + 1, hi) if sign == "<" else (lo, mid - 1)
    steps.append(f"lo={lo} hi={hi}: absent, -1")
    return ". ".join(steps) + "."


register(
    ProblemType(
        "binary_search",
        solve_binary_search,
        _gen_binary_search,
        _work_binary_search,
        "x is [values, target]: a sorted list of distinct ints and an int; return the index of target in values, or -1.",
    )
)


# --- two_sum ---


def solve_two_sum(x):
    values, target = x
    seen = {}
    for i, v in enumerate(values):
        if target - v in seen:
            return f"{seen[target - v]} {i}"
        seen.setdefault(v, i)
    return "none"


def _gen_two_sum(rng, d):
    values = [rng.randint(1, 5 * d + 5) for _ in range(d + 3)]
    i, j = sorted(rng.sample(range(len(values)), 2))
    target = values[i] + values[j]
    return (values, target), f"Two indices in {values} summing to {target}?"


def _work_two_sum(x):
    values, target = x
    seen, steps = {}, []
    for i, v in enumerate(values):
        need = target - v
        if need in seen:
            steps.append(f"i={i} {v} needs {need}: at {seen[need]}. So {seen[need]} {i}")
            return ". ".join(steps) + "."
        steps.append(f"i={i} {v} needs {need}: not seen")
        seen.setdefault(v, i)
    return ". ".join(steps) + ". none."


def _verify_two_sum(task, text):
    """Any pair of distinct indices whose values sum to the target is right."""
    if task.answer == "none":
        return normalise(text) == "none"
    values, target = task.x
    parts = normalise(text).split()
    # isascii: "²" is a digit to isdigit() but not to int(); model output must not raise
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        return False
    i, j = map(int, parts)
    return i != j and max(i, j) < len(values) and values[i] + values[j] == target


register(
    ProblemType(
        "two_sum",
        solve_two_sum,
        _gen_two_sum,
        _work_two_sum,
        'x is [values, target]: a list of ints and an int; return "i j", two distinct indices whose values sum to target, or "none".',
        verify=_verify_two_sum,
    )
)


# --- max_subarray ---


def solve_max_subarray(values):
    best = current = values[0]
    for v in values[1:]:
        current = max(v, current + v)
        best = max(best, current)
    return best


def _gen_max_subarray(rng, d):
    values = [rng.randint(-9, 9) for _ in range(d + 3)]
    return values, f"Maximum subarray sum of {values}?"


def _work_max_subarray(values):
    best = current = values[0]
    steps = [f"{values[0]}: cur={current} best={best}"]
    for v in values[1:]:
        current = max(v, current + v)
        best = max(best, current)
        steps.append(f"{v}: cur={current} best={best}")
    return ". ".join(steps) + "."


register(
    ProblemType(
        "max_subarray",
        solve_max_subarray,
        _gen_max_subarray,
        _work_max_subarray,
        "x is a non-empty list of ints; return the largest sum of a contiguous non-empty part of it.",
    )
)


# --- remove_duplicates ---


def solve_remove_duplicates(values):
    seen, out = set(), []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return " ".join(map(str, out))


def _gen_remove_duplicates(rng, d):
    values = [rng.randint(1, d + 3) for _ in range(d + 4)]
    return values, f"Remove duplicates, keep order: {' '.join(map(str, values))}"


def _work_remove_duplicates(values):
    seen, steps = set(), []
    for v in values:
        steps.append(f"{v} {'seen' if v in seen else 'new'}")
        seen.add(v)
    return ". ".join(steps) + f". Kept: {solve_remove_duplicates(values)}."


register(
    ProblemType(
        "remove_duplicates",
        solve_remove_duplicates,
        _gen_remove_duplicates,
        _work_remove_duplicates,
        "x is a list of ints; return its values without repeats, first occurrences in order, joined by single spaces.",
    )
)


# --- instances, suites and verification ---

TYPES = list(PROBLEM_TYPES)


def solution_source(task_type: str) -> str:
    """The reference solution as standalone code defining ``solve(x)``."""
    solve = PROBLEM_TYPES[task_type].solve
    return inspect.getsource(solve).replace(f"def {solve.__name__}(", "def solve(", 1)


def make_task(seed: int, task_type: str, difficulty: int, index: int) -> Task:
    problem = PROBLEM_TYPES[task_type]
    rng = random.Random(f"{seed}:{task_type}:{difficulty}:{index}")
    x, prompt = problem.generate(rng, difficulty)
    answer = problem.show(problem.solve(x))
    return Task(f"{task_type}-d{difficulty}-s{seed}-{index}", task_type, difficulty, prompt, answer, x)


def generate_suite(
    seed: int, per_cell: int, types=None, difficulties=DIFFICULTIES, exclude: set[str] = frozenset()
) -> list[Task]:
    """``per_cell`` distinct tasks for every (type, difficulty), none with a prompt in ``exclude``.

    Small cells (fizzbuzz at difficulty 1 has 15 inputs) may yield fewer: generation
    stops after a bounded number of draws rather than loop forever.
    """
    tasks = []
    for task_type in types or TYPES:
        for difficulty in difficulties:
            seen = set(exclude)
            made = 0
            for index in range(per_cell * 20):
                if made == per_cell:
                    break
                task = make_task(seed, task_type, difficulty, index)
                if task.prompt in seen:
                    continue
                seen.add(task.prompt)
                tasks.append(task)
                made += 1
    return tasks


def verify(task: Task, text: str | None) -> bool:
    """True when ``text`` (the content of the model's answer) is a right answer: by the
    type's own verifier, else equal to the reference answer once normalised."""
    if text is None:
        return False
    own = PROBLEM_TYPES[task.type].verify
    return own(task, text) if own else normalise(text) == normalise(task.answer)


def worked_solution(task: Task) -> str:
    """The teacher's reasoning for ``task``: the steps of the reference solution."""
    return PROBLEM_TYPES[task.type].work(task.x)


# --- the code suite (seed 003's protocol): write solve(x), run it on the task's input ---

CODE_PROMPT = "Write a Python function solve(x). {spec}\nExample: solve({x}) returns {value}.\nGive the code inside <answer></answer>."


def code_prompt(example: Task) -> str:
    """The code suite's prompt: the spec of ``example``'s type and ``example`` solved.
    The program is then tested on other inputs, so the example's answer gives none away."""
    problem = PROBLEM_TYPES[example.type]
    value = json.dumps(problem.solve(example.x))
    return CODE_PROMPT.format(spec=problem.code_spec, x=json.dumps(example.x), value=value)


def code_example(task: Task) -> Task:
    """Another instance of ``task``'s type and difficulty, the same on every machine, to
    show in the prompt when ``task`` itself is the test."""
    seed = zlib.crc32(task.task_id.encode())
    return next(
        t for t in (make_task(seed, task.type, task.difficulty, i) for i in range(100)) if t.prompt != task.prompt
    )
