"""A recipe holds its OUT_DIR, and its trainers die with it, kill -9 included."""

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

from afm_trainer.recipes.common import LOCK_FILE
from tests.conftest import run_recipe
from tests.tools.test_sandbox import _live_processes_with

# A recipe in miniature: holds OUT_DIR as recipe_main does, then runs a "trainer" through
# common.run: torchrun with two ranks that sleep, marked so the test can find them.
RECIPE = textwrap.dedent(
    """
    import sys
    from afm_trainer.recipes.common import Launch, lock_out_dir, run
    out_dir, mark, script = sys.argv[1:]
    lock_out_dir(out_dir)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, mark]
    raise SystemExit(run(Launch(argv=argv, env={}, out_dir=out_dir), "test", dry_run=False))
    """
)


def _lock_is_free(out_dir) -> bool:
    fd = os.open(os.path.join(out_dir, LOCK_FILE.format(rank=0)), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _wait_for(condition, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_a_second_run_on_the_same_out_dir_is_refused_naming_the_holder(nano_model, starter_data, tmp_path):
    train, _ = starter_data
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom afm_trainer.recipes.common import lock_out_dir\n"
            "lock_out_dir(sys.argv[1]); print('held', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_recipe(1, out, f"MODEL={nano_model}", f"TRAIN_FILES={train}", "trainer.total_epochs=1")
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"error: OUT_DIR {out} is in use by another run (pid {holder.pid} on ")
        assert os.listdir(out) == [LOCK_FILE.format(rank=0)]  # nothing else was written
        dry = run_recipe(1, out, f"MODEL={nano_model}", f"TRAIN_FILES={train}", "DRY_RUN=1")
        assert dry.returncode == 0, dry.stderr  # a preview writes nothing, so it needs no lock
    finally:
        holder.kill()
        holder.wait()
    assert _lock_is_free(out)  # a killed holder holds nothing


def test_a_refused_run_leaves_no_out_dir_behind(nano_model, tmp_path):
    out = tmp_path / "new" / "run"
    result = run_recipe(1, out, f"MODEL={nano_model}", "TRAIN_FILES=/no/such.parquet")
    assert result.returncode == 2 and "TRAIN_FILES file not found" in result.stderr
    assert not (tmp_path / "new").exists()


def test_trainers_die_with_a_killed_recipe_and_hold_the_lock_until_then(tmp_path):
    mark = f"mark-{uuid.uuid4().hex}"
    script = tmp_path / "trainer.py"
    # A rank takes 2 s to stop on SIGTERM (a trainer finishing a write): the lock stays held meanwhile.
    script.write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(2), sys.exit(0)))\n"
        "print('rank up', flush=True)\ntime.sleep(120)\n"
    )
    out = tmp_path / "out"
    recipe = subprocess.Popen(
        [sys.executable, "-c", RECIPE, str(out), mark, str(script)], stdout=subprocess.PIPE, text=True
    )
    try:
        ranks_up = 0
        for line in recipe.stdout:
            ranks_up += "rank up" in line
            if ranks_up == 2:
                break
        assert ranks_up == 2 and len(_live_processes_with(mark)) >= 3  # torchrun and its two ranks
        assert not _lock_is_free(out)
        os.kill(recipe.pid, signal.SIGKILL)
        recipe.wait()
        time.sleep(0.5)
        assert _live_processes_with(mark) and not _lock_is_free(out)  # a rerun now would be refused
        assert _wait_for(lambda: not _live_processes_with(mark), 30), _live_processes_with(mark)
        assert _wait_for(lambda: _lock_is_free(out), 10)  # released once the last holder is reaped
    finally:
        for pid in _live_processes_with(mark):
            os.kill(pid, signal.SIGKILL)


def test_what_verl_leaves_in_the_temporary_folder_goes_with_the_run_and_sockets_fit(tmp_path, capfd):
    """verl's checkpoint saving leaves a lock file per folder in the temporary folder, never
    removed: a run's trainers get a folder of their own for it, removed when they exit. An
    OUT_DIR deep in the file system still leaves room for a socket in it (verl's dataset
    filter starts a multiprocessing manager, which listens on one there)."""
    from afm_trainer.recipes.common import Launch, run, scratch_env

    out = tmp_path / ("a-long-experiment-folder-name-" * 4) / "out"
    trainer = (
        "import os, tempfile, multiprocessing\n"
        "from verl.utils.fs import local_mkdir_safe\n"
        "local_mkdir_safe(os.path.join(os.environ['OUT'], 'global_step_1'))\n"
        "print('temp:', tempfile.gettempdir(), sorted(os.listdir(tempfile.gettempdir())))\n"
        "with multiprocessing.Manager() as manager:\n"
        "    print('manager:', manager.list([1, 2]))\n"
    )
    env = {**scratch_env(str(out)), "OUT": str(out)}
    assert run(Launch(argv=[sys.executable, "-c", trainer], env=env, out_dir=str(out)), "t", dry_run=False) == 0
    printed = capfd.readouterr().out.splitlines()
    (line,) = [x for x in printed if x.startswith("temp: ")]
    scratch = env["TMPDIR"]
    assert line.startswith(f"temp: {scratch} ['ckpt_") and line.endswith(".lock']")
    assert "manager: [1, 2]" in printed
    assert (out / "global_step_1").is_dir() and not os.path.exists(scratch)
    assert scratch != scratch_env(str(out), node_rank=1)["TMPDIR"] != scratch_env(str(tmp_path / "other"))["TMPDIR"]
    assert env["RAY_TMPDIR"] == (os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp")
