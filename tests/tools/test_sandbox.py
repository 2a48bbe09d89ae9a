"""The code sandbox against hostile programs: each is contained and reported."""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import uuid

import pytest

from afm_trainer.tools import sandbox
from afm_trainer.tools.sandbox import run_python

AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="a promise of the sandbox run as root")


def _live_processes_with(text: str) -> list[int]:
    """Live (non-zombie) processes of the host whose command line holds ``text``."""
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    left.append(int(pid))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return left


def marked(code: str) -> tuple[str, str]:
    """``code`` that first re-executes itself with a mark of its own in its command line
    (and every process it forks keeps it), and the mark: tests running at the same time
    have their own sandbox programs."""
    mark = f"mark-{uuid.uuid4().hex}"
    argv = f"[sys.executable, '-I', '-S', __file__, {mark!r}]"
    head = f"import os, sys\nif sys.argv[1:] != [{mark!r}]:\n    os.execv(sys.executable, {argv})\n"
    return head + code, mark


def test_ordinary_program_runs_in_a_private_folder():
    result = run_python("import os\nopen('out.txt', 'w').write('hi')\nprint(os.getcwd(), sorted(os.listdir('.')))")
    assert result.status == "ok" and result.returncode == 0
    assert result.stdout.strip() == "/tmp/sandbox ['main.py', 'out.txt']"


def test_infinite_loop_times_out_and_no_process_outlives_the_run():
    code, mark = marked("import os\nfor _ in range(3):\n    os.fork()\nwhile True:\n    pass")
    result = run_python(code, timeout_s=2)
    assert result.status == "timeout"
    assert 1.9 <= result.duration_s < 6
    assert not _live_processes_with(mark)


def test_huge_allocation_is_refused():
    result = run_python("x = bytearray(4 * 2**30)\nprint('allocated')", memory_mb=256)
    assert result.status == "memory" and "allocated" not in result.stdout


def test_fork_bomb_is_contained_and_cleaned_up():
    code, mark = marked("import os\nwhile True:\n    os.fork()")
    result = run_python(code, timeout_s=3, max_procs=8)
    assert result.status in ("blocked", "timeout")
    assert not _live_processes_with(mark)
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
    name = f"afm_escape_{uuid.uuid4().hex}"
    shared = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"]  # world-writable on the host
    system_file = f"/usr/local/{name}"
    code = f"for d in {shared!r}:\n    open(d + '/{name}', 'w').write('x')\nprint('written')\n"
    code += f"open({system_file!r}, 'w').write('x')"
    result = run_python(code)
    assert result.status == "blocked", result.stderr
    assert "Read-only file system" in result.stderr
    assert "written" in result.stdout  # its /tmp, /dev/shm... are private ones...
    assert not any(os.path.exists(f"{d}/{name}") for d in shared)  # ...that the host never sees
    assert not os.path.exists(system_file)


def test_the_host_file_system_is_invisible(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("s3cret")
    secret.chmod(0o644)  # even a file anyone on the host may read
    paths = [str(secret), os.path.abspath(__file__), "/etc/passwd", "/root", "/home", os.getcwd()]
    code = f"import os\nprint(sorted(os.listdir('/')))\nprint([os.path.exists(p) for p in {paths!r}])"
    result = run_python(code)
    assert result.status == "ok", result.stderr
    top, seen = result.stdout.splitlines()
    assert seen == str([False] * len(paths))
    allowed = {"bin", "dev", "lib", "lib32", "lib64", "libx32", "proc", "run", "sbin", "tmp", "usr", "var"}
    allowed.add(sandbox.sandbox_python().split("/")[1])  # the interpreter's prefix, where it is not /usr
    assert set(eval(top)) <= allowed


def test_it_sees_and_signals_no_process_of_the_host():
    code = f"""
import os, signal
print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
for pid in ({os.getpid()}, {os.getppid()}):
    try:
        os.kill(pid, signal.SIGKILL)
        print('killed', pid)
    except ProcessLookupError:
        print('no such process')
"""
    result = run_python(code)
    assert result.status == "ok", result.stderr
    pids, *kills = result.stdout.splitlines()
    assert eval(pids) == [1, 2]  # bubblewrap's init and the program itself
    assert kills == ["no such process"] * 2


def test_a_daemonised_child_dies_with_the_run():
    mark = f"31.{uuid.uuid4().int % 10**9}"
    code = f"""
import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/sleep", ["sleep", "{mark}"])
    os._exit(0)
print("parent done")
"""
    result = run_python(code, timeout_s=10)
    assert (result.status, result.stdout) == ("ok", "parent done\n"), result
    assert _live_processes_with(mark) == []


def test_shared_memory_and_ipc_die_with_the_run():
    key = uuid.uuid4().int % 2**30 + 1
    code = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print(libc.shmget({key}, 1 << 20, 0o1000 | 0o666))  # IPC_CREAT
"""
    result = run_python(code)
    assert result.status == "ok" and int(result.stdout) >= 0, result
    with open("/proc/sysvipc/shm") as f:
        keys = {int(line.split()[0]) for line in list(f)[1:]}
    assert key not in keys


@AS_ROOT
def test_memory_held_in_memfds_counts_against_the_cap():
    probe = sandbox.memory_cgroup("afm-sandbox-probe", 2**30)
    if probe is None:
        pytest.skip("this machine gives no memory cgroup")
    sandbox.remove_cgroup(probe)
    code = """
import os
fds = []
for i in range(8):  # 8 x 16 MB, each under the file size limit
    fd = os.memfd_create(f"m{i}")
    for _ in range(16):
        os.write(fd, b"x" * 2**20)
    fds.append(fd)
print("held 128 MB")
"""
    result = run_python(code, memory_mb=64, timeout_s=20)
    assert result.status == "memory" and "held" not in result.stdout, result
    assert run_python(code, memory_mb=512, timeout_s=20).status == "ok"  # the same program under a cap it fits


@AS_ROOT
def test_concurrent_runs_of_different_processes_get_different_uids():
    program = "import os, time\ntime.sleep(1.5)\nprint(os.getuid())"
    runner = f"from afm_trainer.tools.sandbox import run_python\nprint(run_python({program!r}).stdout.strip())"
    children = [subprocess.Popen([sys.executable, "-c", runner], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    uids = [child.communicate(timeout=60)[0].strip() for child in children]
    assert all(uids) and uids[0] != uids[1], uids


@AS_ROOT
def test_without_root_it_isolates_the_callers_own_files_and_processes():
    nobody = 65534
    home = tempfile.mkdtemp(dir="/tmp")
    try:
        os.chmod(home, 0o755)
        shutil.copy(sandbox.__file__, os.path.join(home, "sandbox.py"))
        token = os.path.join(home, "token")
        with open(token, "w") as f:
            f.write("s3cret")
        os.chmod(token, stat.S_IRUSR | stat.S_IWUSR)
        os.chown(token, nobody, nobody)
        program = os.path.join(home, "p.py")
        with open(program, "w") as f:
            f.write(
                "import os, signal\n"
                f"print(os.path.exists({token!r}))\n"
                "try:\n    os.kill(os.getppid() if os.getppid() > 2 else 999999, signal.SIGKILL)\n"
                "except ProcessLookupError:\n    print('no such process')\n"
            )
        caller = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(home, "sandbox.py"), program],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=home,
            user=nobody,
            group=nobody,
            extra_groups=[],
        )
        out, err = caller.communicate(timeout=60)
        if "cannot isolate" in err:
            pytest.skip(f"no unprivileged user namespaces here: {err.strip()}")
        result = json.loads(out)
        assert result["status"] == "ok", result
        assert result["stdout"] == "False\nno such process\n"  # the caller's own 0600 file is not there
        with open(token) as f:
            assert f.read() == "s3cret"
    finally:
        shutil.rmtree(home)


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
    mark = f"31.{uuid.uuid4().int % 10**9}"
    code = f"import subprocess, sys\nsubprocess.Popen(['sleep', '{mark}'])\nprint('done')"
    result = run_python(code, timeout_s=10)
    assert (result.status, result.returncode, result.stdout) == ("ok", 0, "done\n"), result
    assert result.duration_s < 5
    assert not _live_processes_with(mark)


def test_failing_program_with_a_background_child_keeps_its_own_exit_code():
    mark = f"31.{uuid.uuid4().int % 10**9}"
    code = f"import subprocess, sys\nsubprocess.Popen(['sleep', '{mark}'])\nsys.exit(3)"
    result = run_python(code, timeout_s=10)
    assert (result.status, result.returncode) == ("error", 3), result
    assert result.duration_s < 5
    assert not _live_processes_with(mark)


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
    assert lines[0] in ("unshare -1 1", "unshare -1 28")  # EPERM, or ENOSPC: a user namespace limit of 0
    if lines[1].startswith("clone"):
        assert lines.pop(1) in ("clone -1 1", "clone -1 28")
    assert lines[1:] == ["fork 7", "child ok"]


def test_the_result_channel_is_apart_from_stdout():
    code = "import os\nprint('[\"printed\"]')\nos.write(int(os.environ['AFM_RESULT_FD']), b'[\"sent\"]')"
    result = run_python(code, with_result=True)
    assert (result.status, result.stdout, result.result) == ("ok", '["printed"]\n', '["sent"]'), result
    assert run_python("import os\nprint('AFM_RESULT_FD' in os.environ)").stdout == "False\n"
