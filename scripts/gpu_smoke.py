#!/usr/bin/env python
"""The helper of scripts/gpu_smoke.sh (run that; these are its steps).

python scripts/gpu_smoke.py gpus                  CUDA devices torch sees (a number)
python scripts/gpu_smoke.py attention             flash_attention_2 where flash-attn works, else sdpa_varlen
python scripts/gpu_smoke.py data DIR [--sft_rows N --sft_val N --pairs N --rl_rows N --rl_val N]
                                                  the smoke's data: DIR/{world,sft,pairs.parquet,rl}
python scripts/gpu_smoke.py standins DIR [...]    a dry run's stand-ins: DIR/model (Qwen2.5-0.5B's config
                                                  and tokenizer, no weights) and DIR/data (as `data`);
                                                  then prints `attention: ...` (as `attention`)
python scripts/gpu_smoke.py check < DRY_RUN_OUTPUT
                                                  every `[tag] command:` composed by Hydra; SFT/DPO ones
                                                  also through verl's config dataclasses
python scripts/gpu_smoke.py eval-model OUT        the model the evaluation takes: the newest export of
                                                  OUT/{grpo,dpo,sft}, else OUT/model (PATH<tab>WHICH)
python scripts/gpu_smoke.py table OUT [--dry_run] the pass/fail table (OUT/stages.tsv, each stage's
                                                  metrics.jsonl, GPU memory samples); written to
                                                  OUT/summary.txt too (not in a dry run); exit 1 if a
                                                  stage did not pass
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES_FILE = "stages.tsv"  # name \t status \t seconds \t output folder \t note (written by gpu_smoke.sh)
PASSED = ("ok", "accepted")


# --- what the node has ------------------------------------------------------------------


def gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def attention() -> str:
    """verl's default, FlashAttention 2, when the package is there and usable; else the
    project's SDPA that keeps packed samples apart (afm_trainer/models/attention.py)."""
    try:
        from transformers.utils import is_flash_attn_2_available

        if is_flash_attn_2_available():
            return "flash_attention_2"
    except Exception:  # an old or broken transformers: the safe choice below
        pass
    return "sdpa_varlen"


# --- data -------------------------------------------------------------------------------


def write_pairs_jsonl(sft_train: str, path: str, n: int) -> None:
    """Preference pairs in TRL's format from the starter rows: the right answer is chosen,
    another row's (well-formed, but wrong) answer rejected."""
    import pandas as pd

    rows = pd.read_parquet(sft_train)["messages"].tolist()
    answers = [list(m)[-1]["content"] for m in rows]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            messages = list(rows[i % len(rows)])
            chosen = answers[i % len(rows)]
            rejected = next(a for a in answers[i + 1 :] + answers[:i] if a != chosen)
            record = {
                "prompt": [{"role": "user", "content": messages[0]["content"]}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "pair_id": f"smoke-{i}",
                "source": "gpu_smoke",
            }
            f.write(json.dumps(record) + "\n")


def run_script(name: str, argv: list[str]) -> None:
    """data_preprocess/NAME.py with these arguments, as its command line runs it (in this
    process: one interpreter start for the whole data stage)."""
    import importlib.util

    path = os.path.join(REPO, "data_preprocess", f"{name}.py")
    print("+ python " + " ".join([os.path.relpath(path, REPO), *argv]), flush=True)
    spec = importlib.util.spec_from_file_location(f"gpu_smoke_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(argv)
    if code:
        raise SystemExit(f"error: data_preprocess/{name}.py exited with code {code}")


def make_data(out: str, sft_rows: int, sft_val: int, pairs: int, rl_rows: int, rl_val: int) -> None:
    """The demo world (its held-out sets are the evaluation's), starter SFT rows, DPO
    pairs through data_preprocess/make_pairs.py and algorithmic RL prompts through
    data_preprocess/make_rl_data.py: single-turn tasks, no search corpus or sandbox needed."""
    from afm_trainer.data.starter import write_starter_dataset
    from afm_trainer.world.make_world import make_world

    world = os.path.join(out, "world")
    make_world(world, n_train=20, n_heldout=110)
    print(f"wrote {world} (held-out sets: {world}/heldout)", flush=True)
    train, val = write_starter_dataset(os.path.join(out, "sft"), n_train=sft_rows, n_val=sft_val)
    print(f"wrote {train} ({sft_rows} rows) and {val} ({sft_val} rows)", flush=True)
    write_pairs_jsonl(train, os.path.join(out, "pairs.jsonl"), pairs)
    run_script(
        "make_pairs",
        [
            "--format",
            "pairs",
            "--input_file",
            os.path.join(out, "pairs.jsonl"),
            "--output_file",
            os.path.join(out, "pairs.parquet"),
        ],
    )
    run_script(
        "make_rl_data",
        [
            "--out",
            os.path.join(out, "rl"),
            "--suite",
            "algorithmic",
            "--world",
            world,
            "--difficulties",
            "1",
            "--n_train",
            str(rl_rows),
            "--n_val",
            str(rl_val),
        ],
    )


def make_standins(folder: str, sizes: dict) -> None:
    """What a dry run's recipes check, in place of the model and data the run makes: the
    model's config.json and Qwen2.5's tokenizer (the DPO recipe measures its pairs with
    it) without the weights, and the same small data."""
    from afm_trainer.models.qwen_tokenizer import build_qwen_tokenizer
    from afm_trainer.models.real_shape import model_config

    model = os.path.join(folder, "model")
    build_qwen_tokenizer(model)
    from transformers import AutoConfig

    AutoConfig.for_model(**model_config("qwen2.5-0.5b")).save_pretrained(model)  # as real_shape writes it
    make_data(os.path.join(folder, "data"), **sizes)
    print(f"attention: {attention()}")  # what this machine would use (the dry run shows it)


# --- checks of a dry run ----------------------------------------------------------------


def load_print_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gpu_smoke_print_config", os.path.join(REPO, "scripts", "print_config.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def check_sft_config(config) -> None:
    """What verl's SFT trainer does with its config before it loads a model: the dataclass
    conversions of SFTTrainer._build_config and the batch arithmetic its loader relies on."""
    from verl.utils.config import omega_conf_to_dataclass

    for section in ("engine", "optim", "checkpoint"):
        omega_conf_to_dataclass(config[section])
    world = config.trainer.nnodes * config.trainer.n_gpus_per_node
    if config.data.train_batch_size % world:
        raise ValueError(f"data.train_batch_size {config.data.train_batch_size} is not a multiple of {world} ranks")
    if config.data.get("use_dynamic_bsz") and config.data.max_token_len_per_gpu < config.data.max_length:
        raise ValueError("data.max_token_len_per_gpu is below data.max_length")
    if config.trainer.device != "cuda":
        raise ValueError(f"trainer.device is {config.trainer.device}, not cuda")


def check(output: str) -> int:
    print_config = load_print_config()
    commands = print_config.parse_commands(output)
    if not commands:
        print("error: no `[tag] command:` line to check", file=sys.stderr)
        return 2
    failed = 0
    for command in commands:
        try:
            config = print_config.compose(command)
            if command.module.endswith(("sft_trainer", "dpo.trainer")):
                check_sft_config(config)
                attn = config.model.override_config.get("attn_implementation", "flash_attention_2 (verl's default)")
            else:
                attn = config.actor_rollout_ref.model.override_config.get("attn_implementation", "flash_attention_2")
            print(f"[{command.tag}] config composes and passes verl's checks (attention: {attn})")
        except Exception as exc:  # Hydra's and verl's errors have many types
            failed += 1
            print(f"error: [{command.tag}] {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1 if failed else 0


# --- after the run ----------------------------------------------------------------------


def latest_export(folder: str) -> str | None:
    from afm_trainer.checkpoints import CheckpointError, latest_complete

    try:
        step = latest_complete(folder)
    except CheckpointError:
        return None
    if not step:
        return None
    actor = os.path.join(step, "actor", "huggingface")  # the RL trainer's layout
    return actor if os.path.isdir(actor) else os.path.join(step, "huggingface")


def eval_model(out: str) -> tuple[str, str]:
    for stage in ("grpo", "dpo", "sft"):
        path = latest_export(os.path.join(out, stage))
        if path:
            step = re.search(r"global_step_(\d+)", path).group(1)
            return path, f"{stage}'s step {step}"
    return os.path.join(out, "model"), "the untrained model"


def read_stages(out: str) -> list[dict]:
    rows = []
    with open(os.path.join(out, STAGES_FILE), encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 4:
                name, status, seconds, folder = fields[:4]
                rows.append(
                    {"stage": name, "status": status, "seconds": seconds, "dir": folder, "note": "\t".join(fields[4:])}
                )
    return rows


def torch_peak(folder: str) -> tuple[float | None, int | None]:
    """(largest perf/max_memory_allocated_gb verl logged, last step) from folder's metrics."""
    if not folder or not os.path.isdir(folder):
        return None, None
    from afm_trainer.metrics import read_metrics

    steps = read_metrics(folder)
    peaks = [v for data in steps.values() for k, v in data.items() if k.endswith("max_memory_allocated_gb")]
    return (max(peaks) if peaks else None), (max(steps) if steps else None)


def sampled_peak(path: str) -> float | None:
    """Largest memory.used (MiB) nvidia-smi printed while the stage ran, in GB."""
    values = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if re.fullmatch(r"\s*\d+(\.\d+)?\s*", line):
                    values.append(float(line))
    return max(values) / 1024 if values else None


def log_problem(path: str) -> str:
    """The line of a failed stage's log that says why: its last `error:` line (a recipe's
    refusal), but the last exception line where that only says a trainer exited; else the
    last line."""
    if not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    exceptions = [line for line in lines if re.search(r"\b\w*(Error|Exception)\b(: |$)", line)]
    if errors and not (exceptions and re.search(r"trainer exited with code", errors[-1])):
        return errors[-1]
    if exceptions:
        return exceptions[-1]
    return lines[-1] if lines else ""


def stage_note(out: str, row: dict) -> str:
    name, note = row["stage"], row["note"]
    log = os.path.join(out, "logs", f"{name}.log")
    if row["status"] not in PASSED and row["status"] not in ("skipped", "not run", "printed"):
        problem = log_problem(log)
        return f"{note}; {problem}" if note and problem else note or problem
    if name == "model" and os.path.isfile(log):
        with open(log, encoding="utf-8", errors="replace") as f:
            wrote = [line.strip() for line in f if line.startswith("wrote ")]
        return wrote[-1] if wrote else note
    if name == "eval":
        results = os.path.join(out, "eval", "results.json")
        if os.path.isfile(results):
            with open(results) as f:
                r = json.load(f)
            return f"{note}; accuracy {r['accuracy']:.1%} on {r['n']} items (random weights: ~0 expected)"
    return note


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(out: str, dry_run: bool) -> int:
    rows = read_stages(out)
    header = ["stage", "result", "seconds", "steps", "torch peak GB", "GPU used peak GB", "note"]
    lines = []
    total = 0.0
    for row in rows:
        peak, steps = (None, None) if dry_run else torch_peak(row["dir"])
        used = None if dry_run else sampled_peak(os.path.join(out, "logs", f"{row['stage']}.gpumem"))
        try:
            total += float(row["seconds"])
        except ValueError:
            pass
        note = row["note"] if dry_run else stage_note(out, row)
        lines.append(
            [
                row["stage"],
                row["status"],
                row["seconds"],
                "-" if steps is None else str(steps),
                fmt(peak, 2),
                fmt(used, 1),
                note,
            ]
        )
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header) - 1)]
    text = []
    for r in [header, *lines]:
        text.append(
            "  ".join(c.ljust(w) if i in (0, 1) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            + "  "
            + r[-1]
        )
    failed = [r["stage"] for r in rows if r["status"] not in PASSED + (("not run", "printed") if dry_run else ())]
    text.append(f"total {total:.0f} s" + ("" if dry_run else " (aim: under 480 s)"))
    verdict = "DRY RUN " if dry_run else ""
    text.append(
        f"{verdict}FAILED: {', '.join(failed)}"
        if failed
        else f"{verdict}PASSED: every stage {'accepted' if dry_run else 'ok'}"
    )
    print("\n".join(text))
    if not dry_run:
        with open(os.path.join(out, "summary.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(text) + "\n")
    return 1 if failed else 0


# --- command line -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], usage=__doc__.split("\n\n")[1])
    parser.add_argument("what", choices=["gpus", "attention", "data", "standins", "check", "eval-model", "table"])
    parser.add_argument("folder", nargs="?")
    parser.add_argument("--dry_run", action="store_true")
    for name, default in (("sft_rows", 32), ("sft_val", 16), ("pairs", 16), ("rl_rows", 16), ("rl_val", 8)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args(argv)
    if args.what in ("data", "standins", "eval-model", "table") and not args.folder:
        parser.error(f"{args.what} needs a folder")
    sizes = {k: getattr(args, k) for k in ("sft_rows", "sft_val", "pairs", "rl_rows", "rl_val")}
    if args.what == "gpus":
        print(gpus())
    elif args.what == "attention":
        print(attention())
    elif args.what == "data":
        make_data(args.folder, **sizes)
    elif args.what == "standins":
        make_standins(args.folder, sizes)
    elif args.what == "check":
        return check(sys.stdin.read())
    elif args.what == "eval-model":
        print("\t".join(eval_model(args.folder)))
    else:
        return table(args.folder, args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
