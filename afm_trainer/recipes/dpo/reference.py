"""The identity of precomputed reference log-probs (``OUT_DIR/reference/{train,val}.parquet``):
which model, and which pairs, they were computed from. The trainer writes it with them
and refuses a file of another model or other pairs; the launcher checks the model before
any rank starts, so a resumed run pointed at the wrong MODEL stops in one line."""

from __future__ import annotations

import hashlib
import json
import os

import pyarrow.parquet as pq

METADATA_KEY = b"afm_reference"


def reference_file(out_dir: str, split: str) -> str:
    return os.path.join(out_dir, "reference", f"{split}.parquet")


def model_identity(path: str) -> dict:
    """The model folder and a digest of its config and weights (a hub id is taken as is)."""
    if not os.path.isdir(path):
        return {"model": path}
    digest = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        if name == "config.json" or name.endswith((".safetensors", ".bin")):
            with open(os.path.join(path, name), "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
    return {"model": os.path.abspath(path), "sha256": digest.hexdigest()}


def stored_identity(path: str) -> dict:
    return json.loads(pq.read_schema(path).metadata[METADATA_KEY])


def mismatch(path: str, stored: dict, identity: dict) -> str | None:
    """Why a reference file does not belong to this run, or None when it does."""
    # the weights' digest is the identity of a local model (it may have moved); a hub id's is its name
    key = "sha256" if "sha256" in identity else "model"
    if stored.get(key) != identity[key]:
        what = "model"
    elif "pair_ids" in identity and stored.get("pair_ids") != identity["pair_ids"]:
        what = "list of pairs"
    else:
        return None
    return (
        f"{path} holds reference log-probs of another {what} than this run's; "
        "delete it to recompute them or use another OUT_DIR"
    )


def check_reference_model(out_dir: str, model: str) -> str | None:
    """The launcher's check: the first stored reference file made from another model."""
    identity = None
    for split in ("train", "val"):
        path = reference_file(out_dir, split)
        if os.path.exists(path):
            identity = identity or model_identity(model)
            if problem := mismatch(path, stored_identity(path), identity):
                return problem
    return None
