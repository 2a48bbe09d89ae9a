"""Search-agent traces -> the three training sets of the progressive recipe (seed 002).

    traces --convert multiturn-------------------------------------> multiturn/
           --convert stepwise--> add summaries --> summary datasets -> summary_prefix/, summary_only/

Writes OUT_DIR/{multiturn,summary_only,summary_prefix}/{train,val}.parquet (or their
shards); every step's output, rejects and report sit in OUT_DIR/work/.
"""

from __future__ import annotations

import os

from afm_trainer.data.convert import convert
from afm_trainer.data.parquet_io import refuse_overwriting_inputs
from afm_trainer.data.splits import prepare_train_val
from afm_trainer.data.summaries import add_summaries, write_summary_datasets

DATASETS = ("multiturn", "summary_only", "summary_prefix")


def run_pipeline(
    traces: str,
    out_dir: str,
    *,
    min_score: float | None = None,
    tokenizer: str | None = None,
    backend: str = "extractive",
    openai_options: dict | None = None,
    val_ratio: float = 0.1,
    seed: int = 42,
    shards: int = 1,
) -> dict:
    """Run every step; returns each step's counts. Each step reads the file the one before wrote."""
    work = os.path.join(out_dir, "work")
    cache = (openai_options or {}).get("cache_dir")
    folders = [work, *(os.path.join(out_dir, name) for name in DATASETS), *([cache] if cache else [])]
    refuse_overwriting_inputs([traces], [], output_folders=folders)  # before any step writes
    os.makedirs(work, exist_ok=True)
    path = lambda name: os.path.join(work, name)  # noqa: E731
    common = {"fmt": "search_agent", "tokenizer_path": tokenizer, "min_score": min_score, "dedup": True}
    report = {
        "convert multiturn": convert(traces, path("multiturn.parquet"), mode="multiturn", **common),
        "convert stepwise": convert(traces, path("steps.parquet"), mode="stepwise", **common),
        "summaries": add_summaries(
            path("steps.parquet"), path("steps_summary.parquet"), backend, **(openai_options or {})
        ),
    }
    write_summary_datasets(path("steps_summary.parquet"), path("summary_prefix.parquet"), path("summary_only.parquet"))
    for name in DATASETS:
        report[f"split {name}"] = prepare_train_val(
            path(f"{name}.parquet"), os.path.join(out_dir, name), val_ratio, seed, shards
        )
    return report
