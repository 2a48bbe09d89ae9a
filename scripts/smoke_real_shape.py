#!/usr/bin/env python
"""Every recipe at a real model's shape, on the CPU: a smoke run of 2 steps each.

    python scripts/smoke_real_shape.py [OUT_DIR] [--arch qwen2.5-0.5b] [--layers N] [--stages sft,dpo,...]
    make smoke-real-shape                              (OUT_DIR out/smoke_real_shape)

The model is Qwen2.5-0.5B's shape with random weights and Qwen2.5's 151,665-token
tokenizer (afm_trainer.models.real_shape; its vocabulary padded to 151,936 rows). The
stages, each one's result recorded whatever the others did:

  model    the model; model_roles: the same with the project's role and trace tokens added
  data     the demo world (20 trajectories per format, its held-out sets); its agent
           chains as SFT rows (convert_traces.py, role tokens in them; 16 to train on,
           90-190 tokens each: the micro-batches come near their token budget); the
           search traces' three progressive sets (run_pipeline.sh); DPO pairs in TRL's
           format from the search conversations (make_pairs.py); the teacher's top-8 on
           the SFT rows (add_teacher_topk.py, the model as its own teacher); and
           search-agent RL prompts (make_rl_data.py --suite qa)
  sft      recipes/train_sft.sh, 2 ranks
  chain    recipes/train_progressive.sh on model_roles, 2 ranks: the agent chains, then
           the summary-only and summary-prefix sets, each phase from the one before
  dpo      recipes/train_dpo.sh, 2 ranks, the reference's log-probs precomputed
  distill  recipes/train_distill.sh, 2 ranks, the teacher's top-8
  grpo     recipes/train_grpo.sh, the CPU rollout with the search tool (CORPUS), 1 rank
  eval     python -m afm_trainer.eval on the SFT checkpoint

Each training stage runs 2 steps (the chain 2 per phase), with gradient checkpointing
(verl's default; the CPU configs turn it off for the small demo models). While a stage
runs, every process it starts (torchrun's ranks, Ray's workers) is watched: its peak
resident memory is the kernel's high-water mark (VmHWM), read every half second. The
table compares the largest peaks with the memory plan of the same recipe and overrides
(scripts/plan_memory.py): ``peak/plan`` is the largest rank's peak over the plan's total
per rank (GRPO's rank is its training worker and its rollout server: their summed
resident memory, sampled). A stage's checkpoints are pruned to their HF exports when it
ends (``written``: what it wrote before; ~7 GB a checkpoint at this shape). Seconds per
step are the time between the first and the last step's metrics. Outputs:
OUT_DIR/STAGE/, logs in OUT_DIR/logs/STAGE.log, the table in OUT_DIR/summary.md and
OUT_DIR/summary.json. Each run starts its stages afresh (the model and data are reused
once built; delete them to rebuild). Exit code 0 when every stage passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1024**3
STAGES = ("model", "data", "sft", "chain", "dpo", "distill", "grpo", "eval")
STEPS = 2
NPROC = 2  # ranks of the SFT-engine recipes (GRPO: one Ray worker)
# A micro-batch's token budget (a DPO pair's two sequences: twice it; GRPO's: 1,024): the
# batches are sized so that micro-batches come near it, as the plan assumes. One 512-token
# micro-batch's fp32 logits over the vocabulary are 0.29 GiB, and the loss's backward
# holds two more copies.
TOKEN_BUDGET = 512
MAX_LENGTH = 512
RL_TOKEN_BUDGET = 1024
# verl's default, which the CPU configs turn off for the small demo models' speed: at this
# shape without it, two ranks' activations and the checkpoint's gathered weights pass
# 23 GB (a DPO rank was killed at 12 GB; a chain phase crashed saving its checkpoint).
CHECKPOINTING = "model.enable_gradient_checkpointing=true"
# Stages whose rank is several processes (names as Ray titles them): GRPO's training worker
# (actor and reference) and the rollout server it ships weights to.
GROUPS = {"grpo": r"^ray::(WorkerDict|HFRolloutServer)"}


def python() -> str:
    return sys.executable


# --- the stages' commands -------------------------------------------------------------------


def stage_commands(stage: str, out: str, args) -> tuple[list[list[str]], str, list[str], int]:
    """(commands, the recipe the plan is made for or "", that recipe's overrides, ranks)."""
    model, roles, data = f"{out}/model", f"{out}/model_roles", f"{out}/data"
    sft_overrides = [
        CHECKPOINTING,
        "data.train_batch_size=8",
        f"data.max_length={MAX_LENGTH}",
        "data.truncation=right",
        f"data.max_token_len_per_gpu={TOKEN_BUDGET}",
        "trainer.total_epochs=1",
        f"trainer.total_training_steps={STEPS}",
    ]
    if stage == "model":
        cmd = [python(), "-m", "afm_trainer.models.real_shape", "--out", model, "--arch", args.arch]
        if args.layers:
            cmd += ["--layers", str(args.layers)]
        return [cmd, [python(), "-m", "afm_trainer.models.special_tokens", "--model", model, "--out", roles]], "", [], 1
    if stage == "data":
        return [[python(), os.path.abspath(__file__), "--make_data", data, "--teacher", model]], "", [], 1
    if stage == "sft":
        files = [f"TRAIN_FILES={data}/long/train.parquet", f"VAL_FILES={data}/long/val.parquet"]
        cmd = ["bash", f"{REPO}/recipes/train_sft.sh", str(NPROC), f"{out}/sft", f"MODEL={model}", *files]
        return [cmd + sft_overrides], "sft", sft_overrides, NPROC
    if stage == "chain":
        phases = {"PHASE1": f"{data}/chain", "PHASE2": f"{data}/progressive/summary_only"}
        phases["PHASE3"] = f"{data}/progressive/summary_prefix"
        keys = []
        for key, folder in phases.items():
            keys += [f"{key}_TRAIN_FILES={folder}/train.parquet", f"{key}_VAL_FILES={data}/long/val.parquet"]
            keys += [f"{key}_EPOCHS=1"]
        cmd = ["bash", f"{REPO}/recipes/train_progressive.sh", str(NPROC), f"{out}/chain", f"MODEL={roles}", *keys]
        return [cmd + sft_overrides], "sft", sft_overrides, NPROC
    if stage == "dpo":
        overrides = [
            CHECKPOINTING,
            "data.train_batch_size=8",
            f"data.max_length={MAX_LENGTH}",
            f"data.max_token_len_per_gpu={2 * MAX_LENGTH}",
            "trainer.total_epochs=1",
            f"trainer.total_training_steps={STEPS}",
        ]
        cmd = ["bash", f"{REPO}/recipes/train_dpo.sh", str(NPROC), f"{out}/dpo", f"MODEL={model}"]
        cmd += [f"TRAIN_FILES={data}/long/pairs.parquet"]
        return [cmd + overrides], "dpo", overrides + [f"data.train_files={data}/long/pairs.parquet"], NPROC
    if stage == "distill":
        cmd = ["bash", f"{REPO}/recipes/train_distill.sh", str(NPROC), f"{out}/distill", f"MODEL={model}"]
        cmd += [f"TRAIN_FILES={data}/distill/train.parquet", f"VAL_FILES={data}/distill/val.parquet"]
        overrides = sft_overrides + [f"data.train_files={data}/distill/train.parquet"]
        return [cmd + sft_overrides], "distill", overrides, NPROC
    if stage == "grpo":
        overrides = [
            f"actor_rollout_ref.{CHECKPOINTING}",
            "data.train_batch_size=4",
            "actor_rollout_ref.rollout.n=2",
            "actor_rollout_ref.actor.ppo_mini_batch_size=4",
            "data.max_prompt_length=512",
            "data.max_response_length=32",
            "actor_rollout_ref.actor.use_dynamic_bsz=true",
            f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={RL_TOKEN_BUDGET}",
            "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
            f"actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu={RL_TOKEN_BUDGET}",
            "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=true",
            f"actor_rollout_ref.ref.log_prob_max_token_len_per_gpu={RL_TOKEN_BUDGET}",
            "trainer.test_freq=-1",
            "trainer.val_before_train=false",
            f"trainer.save_freq={STEPS}",
        ]
        cmd = ["bash", f"{REPO}/recipes/train_grpo.sh", "1", f"{out}/grpo", f"MODEL={model}"]
        cmd += [f"TRAIN_FILES={data}/rl/train.parquet", f"VAL_FILES={data}/rl/val.parquet"]
        cmd += [f"CORPUS={data}/world/corpus.jsonl", f"STEPS={STEPS}"]
        return [cmd + overrides], "grpo", overrides, 1
    if stage == "eval":
        # the SFT stage's newest HF export (its checkpoints were pruned to those)
        exports = glob.glob(f"{out}/sft/global_step_*/huggingface/config.json")
        steps = {int(re.search(r"global_step_(\d+)", path).group(1)): os.path.dirname(path) for path in exports}
        trained = steps[max(steps)] if steps else None
        cmd = [python(), "-m", "afm_trainer.eval", "--model", trained or model, "--suite", "algorithmic"]
        cmd += ["--data", f"{data}/world/heldout/algorithmic.jsonl", "--out", f"{out}/eval"]
        cmd += ["--limit", "8", "--max_new_tokens", "32"]
        return [cmd], "", [], 1
    raise ValueError(stage)


# --- the data -------------------------------------------------------------------------------


def run_script(argv: list[str]) -> None:
    print("+ " + " ".join(argv), flush=True)
    subprocess.run(argv, check=True)


def write_long_rows(chain_rows: str, folder: str) -> None:
    """SFT rows long enough to fill the micro-batches (the agent chains, 90-190 tokens, where
    the starter rows are 40-60): 16 to train on, 8 to validate."""
    import pandas as pd

    rows = pd.read_parquet(chain_rows)
    os.makedirs(folder, exist_ok=True)
    rows.iloc[:16].to_parquet(f"{folder}/train.parquet")
    rows.iloc[16:24].to_parquet(f"{folder}/val.parquet")


def write_pairs_jsonl(multiturn_rows: str, path: str, n: int = 16) -> None:
    """DPO pairs in TRL's format from the search-agent conversations (70-380 tokens): a
    conversation's turns after its question are chosen, the next conversation's rejected."""
    import pandas as pd

    chats = [[dict(m) for m in messages] for messages in pd.read_parquet(multiturn_rows)["messages"]]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            mine, other = chats[i % len(chats)], chats[(i + 1) % len(chats)]
            first = next(j for j, m in enumerate(mine) if m["role"] == "assistant")
            later = next(j for j, m in enumerate(other) if m["role"] == "assistant")
            record = {"prompt": mine[:first], "chosen": mine[first:], "rejected": other[later:]}
            f.write(json.dumps({**record, "pair_id": f"smoke-{i}"}) + "\n")


def make_data(data: str, teacher: str) -> None:
    """Everything the stages train on, from the demo world (see the module's docstring)."""
    from afm_trainer.world.make_world import make_world

    pre = os.path.join(REPO, "data_preprocess")
    world = os.path.join(data, "world")
    make_world(world, n_train=20, n_heldout=110)  # its held-out sets are the evaluation's
    os.makedirs(f"{data}/chain", exist_ok=True)
    run_script(
        [python(), f"{pre}/convert_traces.py", "--format", "agent_chain", "--input_file"]
        + [f"{world}/traces/agent_chain.jsonl", "--output_file", f"{data}/chain/train.parquet"]
    )
    write_long_rows(f"{data}/chain/train.parquet", f"{data}/long")
    run_script(["bash", f"{pre}/run_pipeline.sh", f"{world}/traces/search_agent.jsonl", f"{data}/progressive"])
    write_pairs_jsonl(f"{data}/progressive/multiturn/train.parquet", f"{data}/long/pairs.jsonl")
    run_script(
        [python(), f"{pre}/make_pairs.py", "--format", "pairs", "--input_file", f"{data}/long/pairs.jsonl"]
        + ["--output_file", f"{data}/long/pairs.parquet"]
    )
    os.makedirs(f"{data}/distill", exist_ok=True)
    for split in ("train", "val"):
        run_script(
            [python(), f"{pre}/add_teacher_topk.py", "--input_file", f"{data}/long/{split}.parquet"]
            + ["--output_file", f"{data}/distill/{split}.parquet", "--teacher", teacher, "--k", "8"]
            + ["--max_length", str(MAX_LENGTH)]
        )
    run_script(
        [python(), f"{pre}/make_rl_data.py", "--out", f"{data}/rl", "--suite", "qa", "--world", world]
        + ["--difficulties", "1", "--n_train", str(4 * STEPS), "--n_val", "2"]
    )


# --- watching a stage -----------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _status(pid: int) -> tuple[int, int, str] | None:
    """(VmHWM and VmRSS in bytes, a short name) of a live process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("VmHWM:", "VmRSS:")))
        hwm, rss = (int(fields.get(key, "0 kB").split()[0]) * 1024 for key in ("VmHWM", "VmRSS"))
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    words = [a.decode(errors="replace") for a in argv if a]
    name = " ".join(words)
    if "-m" in words:  # python -m MODULE: the module says what the process is
        name = words[words.index("-m") + 1]
    return hwm, rss, name[:80]


class Watcher:
    """Peak resident memory of every process under a stage, and when each step's metrics
    appear in the stage's metrics.jsonl files. ``group``: names of processes that together
    make one rank (GRPO's training worker and its rollout server), whose summed resident
    memory is sampled too (``group_peak``)."""

    def __init__(self, root_pid: int, out_dir: str | None, log_path: str, group: str | None = None):
        self.root_pid, self.out_dir, self.log_path = root_pid, out_dir, log_path
        self.group = re.compile(group) if group else None
        self.group_peak = 0
        self.peaks: dict[int, tuple[int, str]] = {}
        # where the log was when the largest process's peak last grew: what it was doing then
        self.peak_log_offset = 0
        self.step_times: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.5)

    def sample(self) -> None:
        largest = max((hwm for hwm, _ in self.peaks.values()), default=0)
        group_rss = 0
        for pid in [self.root_pid, *_descendants(self.root_pid)]:
            status = _status(pid)
            if status is None:
                continue
            hwm, rss, name = status
            if self.group and self.group.search(name):
                group_rss += rss
            if hwm >= self.peaks.get(pid, (0, ""))[0]:
                self.peaks[pid] = (hwm, name)
                if hwm > largest and not self.group:
                    largest = hwm
                    self.peak_log_offset = os.path.getsize(self.log_path)
        if group_rss > self.group_peak:
            self.group_peak = group_rss
            self.peak_log_offset = os.path.getsize(self.log_path)
        if not self.out_dir or not os.path.isdir(self.out_dir):
            return
        for folder, _, files in os.walk(self.out_dir):
            if "metrics.jsonl" in files:
                path = os.path.join(folder, "metrics.jsonl")
                with open(path, encoding="utf-8", errors="replace") as f:
                    for line in f:
                        try:
                            step = int(json.loads(line)["step"])
                        except (ValueError, KeyError, TypeError):
                            continue
                        self.step_times.setdefault((path, step), time.time())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def seconds_per_step(self) -> float | None:
        """Between the first and the last step of each metrics file, averaged over files."""
        per_file: dict[str, list[float]] = {}
        for (path, _), t in self.step_times.items():
            per_file.setdefault(path, []).append(t)
        spans = [(max(ts) - min(ts)) / (len(ts) - 1) for ts in per_file.values() if len(ts) > 1]
        return sum(spans) / len(spans) if spans else None


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def prune_checkpoints(folder: str) -> None:
    """Keep only the HF exports of a stage's checkpoints (the evaluation's input): at this
    shape a checkpoint with its optimizer state is ~7 GB a rank group, a smoke makes six."""
    for parent, dirs, _ in os.walk(folder):
        for name in [d for d in dirs if d.startswith("global_step_")]:
            step = os.path.join(parent, name)
            for entry in os.listdir(step):
                if entry != "huggingface":
                    path = os.path.join(step, entry)
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            dirs.remove(name)


def last_line_before(path: str, offset: int) -> str:
    """The last complete log line written before ``offset``: what the stage was doing."""
    with open(path, "rb") as f:
        head = f.read(offset)
    lines = [line for line in head.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def dry_run_stage(stage: str, out: str, args) -> dict:
    """A training stage's recipe checks its command (DRY_RUN=1) and the plan is made; the
    other stages' commands are printed."""
    commands, recipe, overrides, ranks = stage_commands(stage, out, args)
    row = {"stage": stage, "status": "printed", "seconds": 0.0}
    if not recipe:
        for cmd in commands:
            print(f"[smoke] {stage} would run: {' '.join(cmd)}", flush=True)
        return row
    result = subprocess.run(commands[0] + ["DRY_RUN=1"], capture_output=True, text=True)
    print(result.stdout, end="", flush=True)
    if result.returncode:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
        row["status"] = f"REJECTED: {errors[-1] if errors else result.stderr.strip()[-300:]}"
        return row
    from afm_trainer.models.memory_plan import plan

    model = os.path.join(out, "model_roles" if stage == "chain" else "model")
    planned = plan(model, recipe, nproc=ranks, overrides=["device=cpu", *overrides])
    row.update(status="accepted", plan_gib=round(planned["total_bytes"] / GIB, 2))
    return row


def run_stage(stage: str, out: str, args) -> dict:
    commands, recipe, overrides, ranks = stage_commands(stage, out, args)
    log_path = os.path.join(out, "logs", f"{stage}.log")
    stage_out = os.path.join(out, stage) if stage not in ("model", "data") else None
    if stage_out:
        shutil.rmtree(stage_out, ignore_errors=True)  # afresh: a finished run would only resume
    row = {"stage": stage, "status": "ok", "seconds": 0.0, "steps": 0, "processes": []}
    start = time.time()
    peaks: dict[int, tuple[int, str]] = {}
    with open(log_path, "w") as log:
        for cmd in commands:
            print(f"[smoke] {stage}: {' '.join(cmd)}", flush=True)
            log.write("+ " + " ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            watcher = Watcher(proc.pid, stage_out, log_path, GROUPS.get(stage))
            try:
                code = proc.wait(timeout=args.stage_timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
                code = proc.wait()
                row["status"] = f"timed out ({args.stage_timeout}s)"
            watcher.stop()
            peaks.update(watcher.peaks)
            row["seconds_per_step"] = watcher.seconds_per_step()
            group_peak = watcher.group_peak
            row["peak_during"] = last_line_before(log_path, watcher.peak_log_offset)
            row["steps"] = len(watcher.step_times)
            if code != 0 and row["status"] == "ok":
                row["status"] = f"failed ({code})"
            if row["status"] != "ok":
                break
    row["seconds"] = round(time.time() - start, 1)
    if stage_out and os.path.isdir(stage_out):
        row["output_gib"] = round(folder_bytes(stage_out) / GIB, 2)
        prune_checkpoints(stage_out)
    ordered = sorted(peaks.values(), reverse=True)
    row["processes"] = [{"name": name, "peak_gib": round(hwm / GIB, 2)} for hwm, name in ordered[:6]]
    row["peak_gib"] = round(ordered[0][0] / GIB, 2) if ordered else None
    if stage in GROUPS:  # one rank is several processes: their summed memory at its peak
        ordered = [(group_peak, "rank: " + GROUPS[stage])]
        row["peak_gib"] = round(group_peak / GIB, 2)
    if recipe and row["status"] == "ok":
        from afm_trainer.models.memory_plan import plan

        model = os.path.join(out, "model_roles" if stage == "chain" else "model")
        result = plan(model, recipe, nproc=ranks, overrides=["device=cpu", *overrides])
        row["plan_gib"] = round(result["total_bytes"] / GIB, 2)
        row["peak_over_plan"] = round(ordered[0][0] / result["total_bytes"], 2)
        row["rank_peaks_gib"] = [round(hwm / GIB, 2) for hwm, _ in ordered[:ranks]]
    print(f"[smoke] {stage}: {row['status']} in {row['seconds']}s, peak {row.get('peak_gib')} GiB", flush=True)
    if row["status"] != "ok":
        with open(log_path, errors="replace") as f:
            for line in f.readlines()[-15:]:
                print("    | " + line.rstrip(), flush=True)
    return row


# --- the table ------------------------------------------------------------------------------


def table(rows: list[dict], header: str) -> str:
    def cell(value, fmt="{:.2f}"):
        return "-" if value is None else fmt.format(value)

    lines = [
        header,
        "",
        "| stage | result | seconds | s/step | peak RSS per rank (GiB) | plan per rank (GiB) | peak/plan | written (GiB) |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        peaks = row.get("rank_peaks_gib") or ([row["peak_gib"]] if row.get("peak_gib") is not None else [])
        lines.append(
            f"| {row['stage']} | {row['status']} | {row['seconds']:.0f} | {cell(row.get('seconds_per_step'), '{:.1f}')} "
            f"| {', '.join(f'{p:.2f}' for p in peaks) or '-'} | {cell(row.get('plan_gib'))} "
            f"| {cell(row.get('peak_over_plan'))} | {cell(row.get('output_gib'), '{:.1f}')} |"
        )
    return "\n".join(lines) + "\n"


def write_atomic(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_summary(out: str, args, rows: list[dict]) -> str:
    """OUT_DIR/summary.md and summary.json, rewritten after every stage."""
    try:
        with open(os.path.join(out, "model", "config.json")) as f:
            config = json.load(f)
        shape = f"{config['num_hidden_layers']} layers, vocabulary {config['vocab_size']}"
    except OSError:
        shape = "model not built"
    header = (
        f"Real-shape smoke on the CPU ({os.cpu_count()} cores): {args.arch}, {shape}; "
        f"{STEPS} steps a stage, micro-batches of {TOKEN_BUDGET} tokens"
    )
    text = table(rows, header)
    write_atomic(os.path.join(out, "summary.md"), text)
    write_atomic(os.path.join(out, "summary.json"), json.dumps({"header": header, "stages": rows}, indent=2) + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    parser.add_argument("out", nargs="?", default="out/smoke_real_shape", help="OUT_DIR")
    parser.add_argument("--arch", default="qwen2.5-0.5b", help="a published shape (afm_trainer.models.real_shape)")
    parser.add_argument("--layers", type=int, default=None, help="this many decoder layers (default: the shape's)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"which stages, of {','.join(STAGES)}")
    parser.add_argument("--stage_timeout", type=int, default=1200, help="seconds a stage may run")
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="run nothing: each training recipe checks its command (its DRY_RUN=1) against the model and "
        "data an earlier smoke built, with the plan beside it; the other stages' commands are printed",
    )
    parser.add_argument("--make_data", metavar="DIR", help=argparse.SUPPRESS)  # the data stage's own step
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.make_data:
        make_data(args.make_data, args.teacher)
        return 0
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    # Recipe arguments the recipes would take from the environment: a stale export must
    # not change what the smoke runs.
    for key in ("MODEL", "TRAIN_FILES", "VAL_FILES", "CONFIG", "NNODES", "NODE_RANK", "DATA_DIR", "CORPUS", "STEPS"):
        os.environ.pop(key, None)
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    # A process that crashes in native code prints every thread's Python stack to its log.
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")
    rows = []
    for stage in stages:
        if args.dry_run:
            rows.append(dry_run_stage(stage, out, args))
            continue
        built = {"model": f"{out}/model_roles/config.json", "data": f"{out}/data/rl/train.parquet"}.get(stage)
        if built and os.path.exists(built):
            print(f"[smoke] {stage}: reusing what an earlier smoke built (delete it to rebuild)", flush=True)
            rows.append({"stage": stage, "status": "reused", "seconds": 0.0})
            continue
        try:
            rows.append(run_stage(stage, out, args))
        except Exception as exc:  # noqa: BLE001  (a stage's own error; the next stages still run)
            print(f"[smoke] {stage}: error: {exc}", flush=True)
            rows.append({"stage": stage, "status": f"error: {exc}"[:200], "seconds": 0.0})
        write_summary(out, args, rows)
    if args.dry_run:  # writes nothing
        print("\n" + table(rows, "Real-shape smoke: dry run"), flush=True)
        return 0 if all(r["status"] in ("printed", "accepted") for r in rows) else 1
    print("\n" + write_summary(out, args, rows), flush=True)
    return 0 if all(r["status"] in ("ok", "reused") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
