"""The code sandbox against hostile programs: each is contained and reported."""

import json
import os
import socket
import subprocess
import sys
import threading
import uuid

import pytest

from afm_trainer.tools.sandbox import FIRST_UID, run_python


def _sandbox_processes_left():
    """Live (non-zombie) processes of any sandbox user id."""
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid >= FIRST_UID:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                        left.append(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return left


def test_ordinary_program_runs_in_a_private_folder():
    result = run_python("import os\nopen('out.txt', 'w').write('hi')\nprint(os.getcwd(), sorted(os.listdir('.')))")
    assert result.status == "ok" and result.returncode == 0
    assert result.stdout.strip() == "/tmp/sandbox ['main.py', 'out.txt']"


def test_infinite_loop_times_out():
    result = run_python("while True:\n    pass", timeout_s=2)
    assert result.status == "timeout"
    assert 1.9 <= result.duration_s < 6
    assert not _sandbox_processes_left()


def test_huge_allocation_is_refused():
    result = run_python("x = bytearray(4 * 2**30)\nprint('allocated')", memory_mb=256)
    assert result.status == "memory" and "allocated" not in result.stdout


def test_fork_bomb_is_contained_and_cleaned_up():
    result = run_python("import os\nwhile True:\n    os.fork()", timeout_s=3, max_procs=8)
    assert result.status in ("blocked", "timeout")
    assert not _sandbox_processes_left()
    assert subprocess.run(["true"]).returncode == 0  # the machine can still start processes


def test_no_network_even_to_a_loopback_listener():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(5)
    port = listener.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(_accept(listener)), daemon=True).start()
    result = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3).sendall(b'leak')")
    listener.close()
    assert result.status == "blocked", result.stderr
    assert accepted in ([], [None])


def _accept(listener):
    try:
        return listener.accept()
    except OSError:
        return None


def test_writes_outside_its_folder_never_reach_the_host():
    marker = f"/tmp/afm_escape_{uuid.uuid4().hex}"
    system_file = f"/usr/local/afm_escape_{uuid.uuid4().hex}"  # a folder that exists for it, owned by root
    code = f"open({marker!r}, 'w').write('x')\nprint('tmp written')\nopen({system_file!r}, 'w').write('x')"
    result = run_python(code)
    assert result.status == "blocked", result.stderr
    assert "PermissionError" in result.stderr
    assert "tmp written" in result.stdout  # its /tmp is a private one...
    assert not os.path.exists(marker)  # ...that the host never sees
    assert not os.path.exists(system_file)


def test_huge_output_is_truncated_and_flagged():
    result = run_python(
        "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 2**20)", max_output_bytes=100_000, timeout_s=20
    )
    assert result.status == "ok" and result.truncated
    assert len(result.stdout) == 100_000


def test_cli_prints_one_json_result(tmp_path):
    program = tmp_path / "p.py"
    program.write_text("print(6 * 7)")
    out = subprocess.run(
        [sys.executable, "-m", "afm_trainer.tools.sandbox", "--timeout", "5", str(program)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (
        result["status"] == "ok"
        and result["stdout"] == "42\n"
        and set(result) >= {"stderr", "returncode", "duration_s"}
    )


@pytest.mark.parametrize("limit", [["--timeout", "-1"], ["--timeout", "0"], ["--timeout", "inf"], ["--memory_mb", "0"]])
def test_cli_refuses_a_limit_that_would_mean_no_limit(tmp_path, limit):
    program = tmp_path / "p.py"
    program.write_text("print(1)")
    out = subprocess.run(
        [sys.executable, "-m", "afm_trainer.tools.sandbox", *limit, str(program)], capture_output=True, text=True
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and "got" in out.stderr


def test_overlapping_runs_from_threads_do_not_kill_each_other():
    # verl scores rewards in threads: each run needs its own uid, or one run's final
    # kill takes down another's processes.
    from concurrent.futures import ThreadPoolExecutor

    program = "import os, time\ntime.sleep(0.5)\nprint(os.getuid())"
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: run_python(program, timeout_s=10), range(6)))
    assert [r.status for r in results] == ["ok"] * 6, [(r.status, r.stderr[-200:]) for r in results]
    assert len({r.stdout.strip() for r in results}) == 6


def test_background_child_holding_stdout_open_does_not_make_a_finished_run_a_timeout():
    # The main program exits 0 at once; its child sleeps on with stdout inherited.
    # The result is the main program's (ok, 0, its output) and the child is killed.
    code = (
        "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\nprint('done')"
    )
    result = run_python(code, timeout_s=10)
    assert (result.status, result.returncode, result.stdout) == ("ok", 0, "done\n"), result
    assert result.duration_s < 5
    assert not _sandbox_processes_left()


def test_failing_program_with_a_background_child_keeps_its_own_exit_code():
    code = (
        "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\nsys.exit(3)"
    )
    result = run_python(code, timeout_s=10)
    assert (result.status, result.returncode) == ("error", 3), result
    assert result.duration_s < 5
    assert not _sandbox_processes_left()


def test_timeout_reports_the_kill_as_its_returncode():
    result = run_python("import time\nprint('started', flush=True)\ntime.sleep(30)", timeout_s=1)
    assert result.status == "timeout" and result.returncode == -9 and result.stdout == "started\n"


def test_nested_user_namespaces_are_denied_and_ordinary_programs_still_run():
    code = """
import ctypes, os, platform, subprocess, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
print("unshare", libc.unshare(0x10000000), ctypes.get_errno())
if platform.machine() == "x86_64":  # raw clone(CLONE_NEWUSER | SIGCHLD), bypassing glibc
    pid = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    print("clone", pid, ctypes.get_errno())
threads = [threading.Thread(target=lambda: None) for _ in range(3)]
[t.start() for t in threads]
[t.join() for t in threads]
pid = os.fork()
if pid == 0:
    os._exit(7)
print("fork", os.waitpid(pid, 0)[1] >> 8)
print(subprocess.run([sys.executable, "-c", "print('child ok')"], capture_output=True, text=True).stdout.strip())
"""
    result = run_python(code, timeout_s=10)
    assert result.status == "ok", result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "unshare -1 1"  # EPERM
    if lines[1].startswith("clone"):
        assert lines.pop(1) == "clone -1 1"
    assert lines[1:] == ["fork 7", "child ok"]
