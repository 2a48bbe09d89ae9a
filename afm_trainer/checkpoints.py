"""verl checkpoints as afm-trainer uses them: completeness, the latest one, LoRA export.

    python -m afm_trainer.checkpoints latest DIR      # path of the latest complete checkpoint
    python -m afm_trainer.checkpoints finalize DIR    # make every huggingface/ export loadable

verl writes ``DIR/global_step_N/`` and then, last, ``DIR/latest_checkpointed_iteration.txt``.
A step folder is complete when its ``huggingface/`` export has weights, or when verl's
tracker names it or a later step (verl writes the tracker after the folder). Modification
times are never used: they make global_step_50 win over global_step_100 after a copy.
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


def tracked_step(ckpt_dir: str) -> int | None:
    """The step verl's tracker file names, or None."""
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


def latest_complete(ckpt_dir: str) -> str | None:
    """Path of the highest-step checkpoint verl finished writing, or None.

    A step counts only if the tracker has reached it: verl updates the tracker after
    every file of the step is on disk, so a folder above the tracker is a crash's
    leftover, whatever its age.
    """
    tracked = tracked_step(ckpt_dir)
    if tracked is None:
        return None
    complete = [step for step in step_dirs(ckpt_dir) if step <= tracked]
    return step_dirs(ckpt_dir)[max(complete)] if complete else None


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Inspect and finalise verl checkpoint folders.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("latest", help="print the latest complete checkpoint (exit 1 if none)").add_argument("dir")
    sub.add_parser("finalize", help="merge LoRA exports into loadable HF models").add_argument("dir")
    args = parser.parse_args(argv)
    if args.command == "latest":
        path = latest_complete(args.dir)
        if path is None:
            print(f"no complete checkpoint in {args.dir}", file=sys.stderr)
            return 1
        print(path)
        return 0
    for path in finalize(args.dir):
        print(f"merged LoRA adapter into {path}/huggingface")
    return 0


if __name__ == "__main__":
    sys.exit(main())
