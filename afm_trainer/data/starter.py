"""A small bundled SFT data set: short, regular chat tasks a tiny model learns in minutes.

    python -m afm_trainer.data.starter --out DIR [--n_train 2000 --n_val 200 --seed 0]

Writes ``DIR/train.parquet`` and ``DIR/val.parquet`` with verl's ``messages`` column.
Three skills with exact answers, in the trace tags the project trains on:
add two small numbers, reverse a few letters, and answer yes/no to "is N even?".
The train and validation sets are drawn from disjoint seeds and de-duplicated
against each other, so the validation loss measures generalisation, not recall.
"""

from __future__ import annotations

import argparse
import os
import random
import string

import pandas as pd


def _addition(rng: random.Random):
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"What is {a} + {b}?", f"<think>{a} + {b} = {a + b}</think><answer>{a + b}</answer>"


def _reverse(rng: random.Random):
    # Letters apart, so each is one token and reversal is learnable by a tiny model.
    letters = [rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6))]
    return f"Reverse the letters: {' '.join(letters)}", f"<answer>{' '.join(reversed(letters))}</answer>"


def _even(rng: random.Random):
    n = rng.randint(0, 99_999)
    label = "yes" if n % 2 == 0 else "no"
    return f"Is {n} even? Answer yes or no.", f"<think>{n} ends in {n % 10}</think><answer>{label}</answer>"


SKILLS = {"addition": _addition, "reverse": _reverse, "even": _even}


def make_examples(n: int, seed: int, exclude: set[str] | None = None) -> list[dict]:
    """``n`` distinct examples, cycling through the skills; prompts in ``exclude`` are skipped."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    rows, names = [], list(SKILLS)
    for _attempt in range(50 * n + 100):
        if len(rows) == n:
            return rows
        skill = names[len(rows) % len(names)]
        question, answer = SKILLS[skill](rng)
        if question in seen:
            continue
        seen.add(question)
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages, "skill": skill})
    if len(rows) == n:
        return rows
    raise ValueError(f"could not draw {n} distinct examples (the skills have too few distinct prompts)")


def write_starter_dataset(out_dir: str, n_train: int = 2000, n_val: int = 200, seed: int = 0) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    val = make_examples(n_val, seed=seed + 1_000_003)
    train = make_examples(n_train, seed=seed, exclude={r["messages"][0]["content"] for r in val})
    paths = []
    for name, rows in (("train", train), ("val", val)):
        path = os.path.join(out_dir, f"{name}.parquet")
        pd.DataFrame(rows).to_parquet(path + ".tmp", index=False)
        os.replace(path + ".tmp", path)
        paths.append(path)
    return paths[0], paths[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--n_train", type=int, default=2000)
    parser.add_argument("--n_val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train, val = write_starter_dataset(args.out, args.n_train, args.n_val, args.seed)
    print(f"wrote {train} ({args.n_train} rows) and {val} ({args.n_val} rows)")


if __name__ == "__main__":
    main()
