"""data_preprocess/make_afm_data.py: the AFM's set and one per role, from the same chains,
split the same way, with every record accounted for."""

import json
import random
import subprocess
import sys

import pyarrow.parquet as pq

from afm_trainer.world.algorithmic import generate_suite
from afm_trainer.world.teacher import agent_chain_record
from tests.conftest import REPO


def test_four_sets_from_the_same_chains_with_one_split(tmp_path):
    rng = random.Random(0)
    tasks = generate_suite(7, 2, difficulties=[1, 2])
    records = [agent_chain_record(t, rng, kind, retry=0.3) for t, kind in zip(tasks, ["clean", "wrong"] * len(tasks))]
    chains = tmp_path / "chains.jsonl"
    chains.write_text("".join(json.dumps(r) + "\n" for r in records) + "{broken\n")
    out = tmp_path / "data"
    result = subprocess.run(
        [
            sys.executable,
            f"{REPO}/data_preprocess/make_afm_data.py",
            "--input_file",
            str(chains),
            "--output_dir",
            str(out),
            "--min_score",
            "0.5",
            "--val_ratio",
            "0.3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    kept = {r["id"] for r in records if r["score"] >= 0.5}
    ids = {}
    for name in ("afm", "planner", "coder", "reviewer"):
        train, val = (pq.read_table(out / name / f"{split}.parquet").to_pylist() for split in ("train", "val"))
        ids[name] = ({r["trajectory_id"] for r in train}, {r["trajectory_id"] for r in val})
        assert ids[name][0] | ids[name][1] == kept and val
        assert (
            f"{len(records) + 1} chains in, {len(kept)} converted, {len(records) + 1 - len(kept)} rejected"
            in result.stdout
        )
    assert len({json.dumps([sorted(t), sorted(v)]) for t, v in ids.values()}) == 1  # one split for all four
    rejects = [json.loads(line) for line in open(out / "work" / "afm.parquet.rejects.jsonl")]
    assert sum("below --min_score" in r["reason"] for r in rejects) == len(records) - len(kept)
    assert any(r["where"] == f"line {len(records) + 1}" for r in rejects)
