"""On-policy preference pairs: sample k answers per prompt from a checkpoint, score each
with its suite's reward, and pair a right answer with a wrong one.

Input: verl RL parquet (``data_preprocess/make_rl_data.py``: ``prompt``, ``data_source``,
``reward_model.ground_truth``, ``extra_info``); each row's suite (found by its
``data_source``) extracts and credits an answer exactly as the RL reward does. An answer
is right when its credit is 1 (every test passed), wrong otherwise (malformed included).
A prompt gives up to ``pairs_per_prompt`` pairs, one per distinct wrong answer, each with
a right answer taken in turn (a model that is mostly right has one right program and many
different mistakes: each mistake is a lesson, the right answer may repeat); a prompt
with no pair (all right, all wrong) goes to ``OUT.rejects.jsonl`` with its counts, so
every prompt is accounted for in ``OUT.report.json``. A sampled answer holding a reserved
chat token (a model can sample ``<|reviewer|>``) is never pair text, which must not
train as one: it takes no part in pairing and is counted.

Sampling is the project's batched decoder (the CPU rollout's), each answer with its own
seeded random stream: the same checkpoint, data and seed give the same pairs.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import torch

from afm_trainer.data.pairs import PAIR_SCHEMA
from afm_trainer.data.parquet_io import InputError, check_output_file, refuse_overwriting_inputs, write_json, write_rows
from afm_trainer.models.decoding import Request, decode_batch
from afm_trainer.models.special_tokens import reserved_token_in
from afm_trainer.suites import suite_for_source


def sample_answers(
    model, tokenizer, prompts: list[list[dict]], k: int, temperature: float, max_new_tokens: int, seed: int
) -> list[list[str]]:
    """k sampled completions per chat prompt; answer j of prompt i draws from seed (seed, i, j)."""
    requests = []
    for i, prompt in enumerate(prompts):
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)["input_ids"]
        for j in range(k):
            generator = torch.Generator().manual_seed((seed * 1_000_003 + i) * 1009 + j)
            requests.append(
                Request(ids, max_new_tokens, temperature, stop_ids={tokenizer.eos_token_id}, generator=generator)
            )
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(requests), 64):
            outputs += decode_batch(model, requests[start : start + 64], pad_id=tokenizer.pad_token_id or 0)
    texts = tokenizer.batch_decode([o["token_ids"] for o in outputs], skip_special_tokens=True)
    return [texts[i * k : (i + 1) * k] for i in range(len(prompts))]


def credit_of(row: dict, answer: str) -> float:
    suite = suite_for_source(row["data_source"])
    extracted = suite.extract(answer)
    if extracted is None:
        return 0.0
    return float(suite.credit(extracted, row["reward_model"]["ground_truth"], row["extra_info"]))


def make_onpolicy_pairs(
    checkpoint: str,
    rl_file: str,
    output_file: str,
    samples: int = 8,
    temperature: float = 1.0,
    pairs_per_prompt: int = 2,
    max_prompts: int | None = None,
    max_new_tokens: int | None = None,
    seed: int = 0,
) -> dict:
    """Write ``output_file`` (PAIR_SCHEMA), its rejects and report; returns the report."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_output_file(output_file)
    written = [output_file, output_file + ".rejects.jsonl", output_file + ".report.json"]
    refuse_overwriting_inputs([rl_file, checkpoint], written)
    if samples < 2:
        raise InputError(f"--samples must be 2 or more to find a right and a wrong answer, got {samples}")
    if not os.path.isfile(rl_file):
        raise InputError(f"RL data file not found: {rl_file}")
    rows = pq.read_table(rl_file).to_pylist()[:max_prompts]
    if not rows:
        raise InputError(f"no rows in {rl_file}")
    suites = {suite_for_source(r["data_source"]) for r in rows}
    multi_turn = [s.name for s in suites if s.agent != "single_turn_agent"]
    if multi_turn:
        raise InputError(f"on-policy pairs need single-turn suites; {', '.join(multi_turn)} runs a tool agent")
    budget = max_new_tokens or max(s.max_new_tokens for s in suites)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    answers = sample_answers(model, tokenizer, [r["prompt"] for r in rows], samples, temperature, budget, seed)
    jobs = [(row, answer) for row, group in zip(rows, answers) for answer in group]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # code answers run in the sandbox
        credits = list(pool.map(lambda job: credit_of(*job), jobs))

    pairs, outcomes, rejects, reserved = [], Counter(), [], 0
    for i, (row, group) in enumerate(zip(rows, answers)):
        scores = credits[i * samples : (i + 1) * samples]
        usable = [(a, c) for a, c in zip(group, scores) if not reserved_token_in(a)]
        reserved += samples - len(usable)
        right = list(dict.fromkeys(a for a, c in usable if c >= 1.0))  # distinct answers, in order
        wrong = list(dict.fromkeys(a for a, c in usable if c < 1.0))
        row_id = (row.get("extra_info") or {}).get("id") or f"row {i}"
        if not right or not wrong:
            outcome = "all wrong" if not right else "all right"
            outcomes[outcome] += 1
            reason = f"{outcome}: {sum(c >= 1.0 for c in scores)} of {samples} answers right"
            if len(usable) < samples:
                reason += f" ({samples - len(usable)} held a reserved chat token)"
            rejects.append({"where": f"row {i}", "id": row_id, "reason": reason, "credits": scores})
            continue
        outcomes["paired"] += 1
        for n, bad in enumerate(wrong[:pairs_per_prompt]):
            good = right[n % len(right)]
            pairs.append(
                {
                    "prompt": row["prompt"],
                    "chosen": [{"role": "assistant", "content": good}],
                    "rejected": [{"role": "assistant", "content": bad}],
                    "pair_id": f"{row_id}#{n}",
                    "source": f"on-policy {os.path.basename(os.path.normpath(checkpoint))}",
                    "weight": 1.0,
                }
            )
    with open(output_file + ".rejects.jsonl.tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rejects)
    os.replace(output_file + ".rejects.jsonl.tmp", output_file + ".rejects.jsonl")
    report = {
        "checkpoint": checkpoint,
        "rl_file": rl_file,
        "prompts": len(rows),
        "samples_per_prompt": samples,
        "temperature": temperature,
        "sampled_accuracy": sum(c >= 1.0 for c in credits) / len(credits),
        "prompts_by_outcome": dict(outcomes),
        "answers_with_reserved_token": reserved,
        "pairs": len(pairs),
    }
    if not pairs:
        raise InputError(f"no pair could be made from {len(rows)} prompts: {dict(outcomes)}")
    write_rows(pairs, PAIR_SCHEMA, output_file)
    write_json(report, output_file + ".report.json")
    return report
