"""verl checkpoints as afm-trainer uses them: completeness, the latest one, LoRA export.

    python -m afm_trainer.checkpoints latest DIR      # path of the latest complete checkpoint
    python -m afm_trainer.checkpoints finalize DIR    # make every huggingface/ export loadable

verl writes ``DIR/global_step_N/`` and then, last, ``DIR/latest_checkpointed_iteration.txt``
(the tracker). A checkpoint ``global_step_N`` is complete when both hold:

1. the tracker names N or a later step (a folder above the tracker is a crash's leftover);
2. its files are there. In its model folder (``global_step_N/`` for the SFT trainer,
   ``global_step_N/actor/`` for the RL trainer; a ``critic/`` is checked the same way,
   without the export):

   - every rank's model shard: ``model_world_size_W_rank_R.pt`` for R = 0 .. W-1, and every
     rank's ``optim_...``/``extra_state_...`` shard of that W when any was written;
   - a ``huggingface/`` export with ``config.json`` and its weights: ``model.safetensors``
     (or ``pytorch_model.bin``), or an index (``*.index.json``) and every file it lists.

The latest complete checkpoint is the folder the tracker names. If that folder is missing
or incomplete, that is an error (:class:`CheckpointError`; the CLI prints one ``error:``
line naming the tracker and the step, exit 1), never a fallback to another folder: verl
resumes from the tracker's step, so an older folder would be a silent rewind. No tracker
means no complete checkpoint (exit 1). Modification times are never used: they make
global_step_50 win over global_step_100 after a copy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys

TRACKER_FILE = "latest_checkpointed_iteration.txt"
STEP_DIR = re.compile(r"^global_step_(\d+)$")
LORA_EXPORT_MARKER = "afm_lora_merged.json"
PLACEHOLDER_STEP = "global_step_LATEST"  # in dry runs, for a checkpoint not written yet


class CheckpointError(ValueError):
    """verl's tracker names a checkpoint whose files are not all there (one-line message)."""


def tracked_step(ckpt_dir: str) -> int | None:
    """The step verl's tracker file names, or None (no tracker, or not a step number)."""
    try:
        with open(os.path.join(ckpt_dir, TRACKER_FILE)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def step_dirs(ckpt_dir: str) -> dict[int, str]:
    """{step: path} of every global_step_N folder in ckpt_dir."""
    found = {}
    for name in os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []:
        if (m := STEP_DIR.match(name)) and os.path.isdir(os.path.join(ckpt_dir, name)):
            found[int(m.group(1))] = os.path.join(ckpt_dir, name)
    return found


SHARD = re.compile(r"^(model|optim|extra_state)_world_size_(\d+)_rank_(\d+)\.pt$")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _shards_problem(folder: str, where: str) -> str | None:
    """Why verl's per-rank shards in folder are not all there (a phrase), or None."""
    ranks: dict[tuple[str, int], set[int]] = {}
    for name in os.listdir(folder):
        if m := SHARD.match(name):
            ranks.setdefault((m.group(1), int(m.group(2))), set()).add(int(m.group(3)))
    sizes = sorted({size for kind, size in ranks if kind == "model"})
    if not sizes:
        return f"no {where}model_world_size_W_rank_R.pt"
    if len(sizes) > 1:
        return f"{where}model shards of several world sizes {sizes}"
    size = sizes[0]
    for (kind, kind_size), have in sorted(ranks.items()):
        if kind_size != size:
            return f"{where}{kind} shards of world size {kind_size}, model shards of {size}"
        if lacking := sorted(set(range(size)) - have):
            more = f" (and {len(lacking) - 1} more rank(s))" if len(lacking) > 1 else ""
            return f"no {where}{kind}_world_size_{size}_rank_{lacking[0]}.pt{more}"
    return None


def _export_problem(hf_dir: str, where: str) -> str | None:
    """Why a huggingface/ export (config.json and weights) is not all there (a phrase), or None."""
    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        return f"no {where}huggingface/config.json"
    if any(os.path.isfile(os.path.join(hf_dir, name)) for name in HF_WEIGHTS):
        return None
    for name in HF_WEIGHTS:
        index = os.path.join(hf_dir, f"{name}.index.json")
        if os.path.isfile(index):
            try:
                with open(index) as f:
                    files = sorted(set(json.load(f)["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError, TypeError):
                return f"unreadable {where}huggingface/{name}.index.json"
            lacking = [file for file in files if not os.path.isfile(os.path.join(hf_dir, file))]
            return f"no {where}huggingface/{lacking[0]}" if lacking else None
    return f"no {where}huggingface/ weights (model.safetensors)"


def missing_files(step_dir: str) -> str | None:
    """Why a step folder does not hold the files verl writes for a checkpoint (a phrase
    such as "no huggingface/config.json"; rule in the module docstring), or None when it does."""
    if not os.path.isdir(step_dir):
        return "no such folder"
    actor = os.path.join(step_dir, "actor")
    model_dir, where = (actor, "actor/") if os.path.isdir(actor) else (step_dir, "")  # RL trainer: actor/
    problem = _shards_problem(model_dir, where) or _export_problem(os.path.join(model_dir, "huggingface"), where)
    critic = os.path.join(step_dir, "critic")
    if problem is None and os.path.isdir(critic):
        problem = _shards_problem(critic, "critic/")
    return problem


def latest_complete(ckpt_dir: str) -> str | None:
    """Path of the checkpoint verl's tracker names, once its files are checked; None when
    there is no tracker (verl has not finished a checkpoint in ckpt_dir).

    Raises CheckpointError, with a one-line message naming the tracker and the step, when
    the tracker is unreadable or names a step whose folder is missing or incomplete:
    verl's tracker is written after the folder, so such a folder was deleted or copied
    in part since, and no other folder is a safe substitute (a folder above the tracker
    is a crash's leftover, one below it an older model than verl resumes from).
    """
    tracker = os.path.join(ckpt_dir, TRACKER_FILE)
    if not os.path.isfile(tracker):
        return None
    tracked = tracked_step(ckpt_dir)
    if tracked is None:
        raise CheckpointError(f"{tracker} does not name a step")
    path = os.path.join(ckpt_dir, f"global_step_{tracked}")
    if not os.path.isdir(path):
        raise CheckpointError(f"{tracker} names step {tracked}, but {path} is missing")
    if problem := missing_files(path):
        raise CheckpointError(f"{tracker} names step {tracked}, but {path} is incomplete: {problem}")
    return path


def latest_export(ckpt_dir: str) -> tuple[str, bool]:
    """(the HF export of ckpt_dir's latest complete checkpoint, whether it exists): when
    none exists yet, the path with ``global_step_LATEST`` that a dry run prints for it."""
    latest = latest_complete(ckpt_dir)
    if latest:
        return os.path.join(latest, "huggingface"), True
    return os.path.join(os.path.abspath(ckpt_dir), PLACEHOLDER_STEP, "huggingface"), False


def _merge_lora_state_dict(state_dict: dict, scale: float) -> dict:
    """PEFT-wrapped weights -> plain weights with W + scale * B @ A folded in."""
    merged = {}
    for key, tensor in state_dict.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        plain = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        if key.endswith(".base_layer.weight"):
            stem = key[: -len(".base_layer.weight")]
            lora_a = state_dict[f"{stem}.lora_A.default.weight"].float()
            lora_b = state_dict[f"{stem}.lora_B.default.weight"].float()
            tensor = (tensor.float() + scale * (lora_b @ lora_a)).to(tensor.dtype)
        merged[plain] = tensor
    return merged


def merge_lora_export(step_dir: str) -> bool:
    """Turn verl's LoRA ``huggingface/`` export (PEFT-wrapped keys, which
    AutoModelForCausalLM cannot load) into a plain model with the adapter merged in.

    Returns True if the export was rewritten. Written to a temporary folder and renamed
    into place, with a marker file, so it is done once and never half-done.
    """
    hf_dir = os.path.join(step_dir, "huggingface")
    meta_path = os.path.join(step_dir, "lora_train_meta.json")
    weights = os.path.join(hf_dir, "model.safetensors")
    if not (os.path.isfile(meta_path) and os.path.isfile(weights)):
        return False
    if os.path.exists(os.path.join(hf_dir, LORA_EXPORT_MARKER)):
        return False

    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    state_dict = load_file(weights)
    if not any(".lora_A." in k for k in state_dict):
        return False
    with open(meta_path) as f:
        meta = json.load(f)
    scale = meta["lora_alpha"] / meta["r"]
    merged = _merge_lora_state_dict(state_dict, scale)

    config = AutoConfig.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if getattr(config, "tie_word_embeddings", False):
        merged.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(merged, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"LoRA merge of {hf_dir}: missing {missing}, unexpected {unexpected}")

    tmp_dir = hf_dir + ".merging"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    shutil.copytree(hf_dir, tmp_dir, ignore=shutil.ignore_patterns("model*.safetensors*"))
    model.save_pretrained(tmp_dir)
    with open(os.path.join(tmp_dir, LORA_EXPORT_MARKER), "w") as f:
        json.dump({"merged_from": "lora", **meta}, f)
    old_dir = hf_dir + ".lora"
    shutil.rmtree(old_dir, ignore_errors=True)
    os.replace(hf_dir, old_dir)
    os.replace(tmp_dir, hf_dir)
    shutil.rmtree(old_dir)
    return True


def make_attention_portable(step_dir: str) -> bool:
    """Write plain "sdpa" into an export whose config names the project's training-only
    attention (``sdpa_varlen``, same results): transformers elsewhere would refuse
    to load it. Returns True if config.json was rewritten (atomically)."""
    from afm_trainer.models.attention import NAME as TRAINING_ATTENTION

    path = os.path.join(step_dir, "huggingface", "config.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        config = json.load(f)
    if config.get("attn_implementation") != TRAINING_ATTENTION:
        return False
    config["attn_implementation"] = "sdpa"
    tmp = f"{path}.{os.getpid()}.tmp"  # unique per writer: concurrent finalizers never share a temp file
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2)
    os.replace(tmp, path)
    return True


def finalize(ckpt_dir: str) -> list[str]:
    """Make every complete checkpoint's huggingface/ export (actor/huggingface/ for the RL
    trainer) loadable by plain transformers; returns the step folders whose LoRA adapter
    was merged."""
    tracked = tracked_step(ckpt_dir)
    merged = []
    for step, path in sorted(step_dirs(ckpt_dir).items()):
        if tracked is None or step > tracked:
            continue
        make_attention_portable(os.path.join(path, "actor"))  # the RL trainer's layout: global_step_N/actor/huggingface
        make_attention_portable(path)
        if merge_lora_export(path):
            merged.append(path)
    return merged


LATEST_HELP = """\
Print DIR/global_step_N, the checkpoint verl's tracker file (DIR/latest_checkpointed_iteration.txt,
written after the step folder) names, once its files are checked: in the model folder
(global_step_N/, or global_step_N/actor/ for the RL trainer) every rank's
model_world_size_W_rank_R.pt (and optim_/extra_state_ shards, when written) and a huggingface/
export with config.json and its weights. Never chosen by modification time.

Exit 1 with one line on stderr when there is no tracker ("no complete checkpoint in DIR") or
when the folder the tracker names is missing or incomplete ("error: TRACKER names step N, but
... is missing"): no other folder is used instead."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Inspect and finalise verl checkpoint folders.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "latest",
        help="print the latest complete checkpoint: the tracker's step, its files checked (exit 1 if none)",
        description=LATEST_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_argument("dir")
    sub.add_parser("finalize", help="merge LoRA exports into loadable HF models").add_argument("dir")
    args = parser.parse_args(argv)
    if args.command == "latest":
        try:
            path = latest_complete(args.dir)
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if path is None:
            print(f"no complete checkpoint in {args.dir} (no {TRACKER_FILE})", file=sys.stderr)
            return 1
        print(path)
        return 0
    for path in finalize(args.dir):
        print(f"merged LoRA adapter into {path}/huggingface")
    return 0


if __name__ == "__main__":
    sys.exit(main())
