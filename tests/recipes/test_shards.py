"""Sharded parquet is a first-class input: the recipes take a folder, a glob or the
shards' names, and a run on shards is the run on the joined file."""

import pyarrow.parquet as pq
import pytest

from afm_trainer.data.splits import write_split
from afm_trainer.metrics import read_metrics
from afm_trainer.recipes.common import RecipeError, data_files
from tests.conftest import run_recipe
from tests.recipes.test_progressive import progressive


def _shard(parquet: str, folder, shards: int) -> list[str]:
    table = pq.read_table(parquet)
    folder.mkdir(parents=True, exist_ok=True)
    return write_split(table.to_pylist(), table.schema, str(folder), "train", shards)


def test_folders_globs_and_lists_name_the_shards_in_order(tmp_path, starter_data):
    paths = _shard(starter_data[0], tmp_path, 3)
    assert data_files(str(tmp_path)) == paths
    assert data_files(str(tmp_path / "train-*.parquet")) == paths
    assert data_files(",".join(paths[:2])) == paths[:2]
    with pytest.raises(RecipeError, match="no file matches"):
        data_files(str(tmp_path / "nothing-*.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecipeError, match="holds no .parquet"):
        data_files(str(tmp_path / "empty"))


def test_progressive_data_dir_finds_shards(tmp_path, nano_model, starter_data):
    for name in ("multiturn", "summary_only", "summary_prefix"):
        _shard(starter_data[0], tmp_path / "data" / name, 2)
    result = progressive(1, tmp_path / "out", f"MODEL={nano_model}", f"DATA_DIR={tmp_path / 'data'}", "DRY_RUN=1")
    assert result.returncode == 0, result.stderr
    phase1 = next(line for line in result.stdout.splitlines() if line.startswith("[phase 1] command:"))
    folder = tmp_path / "data" / "multiturn"
    assert f"data.train_files=[{folder}/train-00000-of-00002.parquet,{folder}/train-00001-of-00002.parquet]" in phase1


@pytest.mark.e2e
def test_a_run_on_shards_equals_the_run_on_the_joined_file(tmp_path, nano_model, starter_data):
    _shard(starter_data[0], tmp_path / "shards", 3)
    losses = {}
    for name, files in (("joined", starter_data[0]), ("shards", tmp_path / "shards")):
        out = tmp_path / name
        result = run_recipe(
            1, out, f"MODEL={nano_model}", f"TRAIN_FILES={files}", "trainer.total_training_steps=3", "optim.lr=1e-3"
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        losses[name] = [m["train/loss"] for _, m in sorted(read_metrics(str(out)).items()) if "train/loss" in m]
    assert len(losses["joined"]) == 3 and losses["shards"] == losses["joined"]
