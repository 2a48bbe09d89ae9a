"""A non-editable install works on its own: configs and demo settings ship with the
package, and nothing reaches into the clone (run from a folder outside it)."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package installed (not editable) into a folder of its own, first on the path."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    # a copy of the sources, so that the build leaves nothing in the clone
    source = build / "source"
    shutil.copytree(
        REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", ".bench", "out", "build", "*.egg-info")
    )
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target)]
    result = subprocess.run(
        [*pip, str(source)],
        capture_output=True,
        text=True,
        cwd=build,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    return target, env, str(tmp_path_factory.mktemp("elsewhere"))


def _run(argv, env, cwd):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


@pytest.mark.e2e
def test_installed_package_runs_dry_runs_and_eval_help_outside_the_clone(installed, nano_model):
    target, env, elsewhere = installed
    where = _run(["-c", "import afm_trainer; print(afm_trainer.__file__)"], env, elsewhere)
    assert where.stdout.startswith(str(target)), where.stdout + where.stderr
    assert _run(["-m", "afm_trainer.eval", "--help"], env, elsewhere).returncode == 0
    demo = _run(["-m", "afm_trainer.recipes.chain.main", "progressive", "1", "out", "DRY_RUN=1"], env, elsewhere)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert demo.stdout.count("command:") == 3 and f"--config-path={target}" in demo.stdout
    assert not os.path.exists(os.path.join(elsewhere, "out"))  # a dry run builds nothing
    rl = _run(
        ["-m", "afm_trainer.recipes.grpo.main", "1", "rl", f"MODEL={nano_model}", "SFT_DIR=none", "DRY_RUN=1"],
        env,
        elsewhere,
    )
    assert rl.returncode == 0 and "accepted by verl's validation" in rl.stdout, rl.stderr[-2000:]
    # the preference recipe composes its config over the SFT recipe's, from the installed package
    from tests.recipes.test_dpo_recipe import write_pairs

    pairs = write_pairs(os.path.join(elsewhere, "pairs.parquet"))
    dpo = _run(
        ["-m", "afm_trainer.recipes.dpo.main", "1", "dpo", f"MODEL={nano_model}", f"TRAIN_FILES={pairs}", "DRY_RUN=1"],
        env,
        elsewhere,
    )
    assert dpo.returncode == 0 and "-m afm_trainer.recipes.dpo.trainer" in dpo.stdout, dpo.stderr[-2000:]
