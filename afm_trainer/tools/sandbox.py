"""Run untrusted Python (model output, code-execution rewards) in a sandbox.

    python -m afm_trainer.tools.sandbox [--timeout S] [--memory_mb M] FILE.py
    # prints one JSON object: {"status", "stdout", "stderr", "returncode", "duration_s", "truncated"}

    from afm_trainer.tools.sandbox import run_python
    result = run_python("print(1 + 1)", timeout_s=5)

status: "ok" (exit 0), "timeout" (wall or CPU time), "memory" (allocation refused, or
the memory cap reached), "blocked" (a sandbox rule stopped it: network, file system,
process count), "error" (any other failure).

The result is the main program's: a run ends when it exits; every process it started
dies with it, and status and returncode come from the main program's exit alone (so
"ok" always means returncode 0). A program killed by signal N has returncode -N: -9 on
a timeout, -24 when the CPU limit hit first.

What the sandbox promises (each is a test in tests/tools/test_sandbox.py):
1. Files: the program sees a minimal root: ``/usr`` (with the ``/bin``, ``/lib``
   links), its interpreter, read-only; a ``/proc`` of its own; a minimal ``/dev``; and
   small private tmpfs over ``/tmp``, ``/var/tmp``, ``/dev/shm`` and ``/run/lock``. No
   home, project, data or outputs of the host are there, and nothing it writes survives.
2. Processes: a PID namespace: it sees and can signal only its own processes, and when
   the main program exits or the run times out, every process it started is killed,
   daemons included.
3. Network: none (a network namespace with only a downed loopback).
4. IPC: an IPC namespace: SysV shared memory and message queues die with the run.
5. Privileges: all capabilities dropped, no setuid, no new user namespaces.
6. As root, the program runs under a user id of its own, held by no other run on the
   machine at the same time (a lock file each), and everything it holds in memory
   (heap, tmpfs files, memfds) counts against a memory cgroup capped at ``memory_mb``;
   reaching the cap ends the run with status "memory". Without root it runs as the
   caller's uid mapped into a user namespace: promises 1-5 hold, and memory is capped
   by rlimits only (address space; file size times open files).
7. Limits: wall time, CPU seconds, processes, open files, file size, output bytes kept.

The namespaces and the minimal root are bubblewrap's (``bwrap``, the sandbox Flatpak
runs apps in): a PID namespace needs an init process and a fresh ``/proc``, and a
minimal root needs a pivot_root, which bubblewrap has done, reviewed, for years. What it
does not do (a memory cgroup, a unique user id, output caps) is done here. Without
``bwrap`` (``apt install bubblewrap``) or user namespaces the sandbox refuses to run
(``SandboxUnavailable``) rather than run code unconfined.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

WORKDIR = "/tmp/sandbox"
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
ROOT_LINKS = ("/bin", "/lib", "/lib32", "/lib64", "/libx32", "/sbin")  # links into /usr on merged-/usr systems
FIRST_UID, N_UIDS = 200_000, 10_000  # sandbox user ids (as root): no real account uses these
LOCK_DIR = "/run/afm-sandbox"  # one lock file per sandbox uid in use
CGROUP_ROOT = "/sys/fs/cgroup"
BLOCKED_MARKERS = (
    "Network is unreachable",
    "Errno 101",
    "Errno 99",
    "Operation not permitted",
    "Errno 1]",
    "Permission denied",
    "Errno 13",
    "Read-only file system",
    "Errno 30",
    "Resource temporarily unavailable",
    "Errno 11",
)


class SandboxUnavailable(RuntimeError):
    """This machine cannot isolate code (no bwrap, or no user namespaces)."""


@dataclass
class SandboxResult:
    status: str
    stdout: str
    stderr: str
    returncode: int | None
    duration_s: float
    truncated: bool = False
    result: str = ""  # what the program wrote to the result channel (with_result=True)


def sandbox_python() -> str:
    """An interpreter the sandbox user may execute: the system one when the running one
    lives under a private home (a venv or pyenv under /root is closed to other users)."""
    candidates = [os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"]
    for path in candidates:
        path = os.path.realpath(path)
        parts = path.split(os.sep)
        folders = [os.sep.join(parts[:i]) or "/" for i in range(1, len(parts))]
        if os.path.isfile(path) and all(os.stat(d).st_mode & 0o001 for d in folders) and os.stat(path).st_mode & 0o001:
            return path
    raise SandboxUnavailable("no Python interpreter that other users may run (tried: " + ", ".join(candidates) + ")")


def bwrap_argv(python: str, code_fd: int, status_fd: int, max_file_mb: int, max_procs: int) -> list[str]:
    """The bubblewrap command line of promises 1-5."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable("the sandbox needs bubblewrap: install it (apt install bubblewrap)")
    argv = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"]
    argv += ["--cap-drop", "ALL", "--json-status-fd", str(status_fd), "--ro-bind", "/usr", "/usr"]
    for path in ROOT_LINKS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    if not python.startswith("/usr/"):  # an interpreter installed elsewhere: its prefix, read-only
        prefix = os.path.dirname(os.path.dirname(python))
        argv += ["--ro-bind", prefix, prefix]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    for folder in PRIVATE_DIRS:
        argv += ["--perms", "1777", "--size", str(max_file_mb * 2 * 2**20), "--tmpfs", folder]
    argv += ["--dir", WORKDIR, "--perms", "0444", "--file", str(code_fd), f"{WORKDIR}/main.py", "--chdir", WORKDIR]
    # The process cap is set inside the sandbox's user namespace, where it counts the
    # program's processes only (processes are counted per user namespace and uid).
    prlimit = shutil.which("prlimit", path="/usr/bin:/bin") or "/usr/bin/prlimit"
    return argv + ["--", prlimit, f"--nproc={max_procs}", "--", python, "-I", "-S", f"{WORKDIR}/main.py"]


class SandboxUser:
    """As root: a uid no other run holds (an flock'ed file per uid, released when the run
    ends or its process dies) and a memory cgroup for it where the machine has one."""

    def __init__(self, memory_mb: int):
        self.uid, self.lock, self.cgroup = None, None, None
        if os.geteuid() != 0:
            return
        lock_dir = (
            LOCK_DIR if os.path.isdir(os.path.dirname(LOCK_DIR)) else os.path.join(tempfile.gettempdir(), "afm-sandbox")
        )
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        for uid in range(FIRST_UID, FIRST_UID + N_UIDS):
            fd = os.open(os.path.join(lock_dir, str(uid)), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.uid, self.lock = uid, fd
            break
        else:
            raise SandboxUnavailable(f"all {N_UIDS} sandbox user ids are in use")
        self.cgroup = memory_cgroup(f"afm-sandbox-{self.uid}", memory_mb * 2**20)
        self.oom_kills_before = oom_kills(self.cgroup) if self.cgroup else 0

    def enter(self) -> None:
        """In the child, before bwrap runs: join the cgroup, become the sandbox uid."""
        if self.uid is None:
            return
        if self.cgroup:
            with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        os.setgroups([])
        os.setgid(self.uid)
        os.setuid(self.uid)

    def out_of_memory(self) -> bool:
        return bool(self.cgroup) and oom_kills(self.cgroup) > self.oom_kills_before

    def release(self) -> None:
        if self.cgroup:
            remove_cgroup(self.cgroup, wait=False)
        if self.lock is not None:
            os.close(self.lock)


def oom_kills(cgroup: str) -> int:
    """How many processes the kernel has killed in the cgroup for reaching its cap."""
    for name in ("memory.events", "memory.oom_control"):  # cgroup v2, v1
        try:
            with open(os.path.join(cgroup, name)) as f:
                counts = dict(line.split() for line in f if len(line.split()) == 2)
        except FileNotFoundError:
            continue
        return int(counts.get("oom_kill", 0))
    return 0


def memory_cgroup(name: str, limit_bytes: int) -> str | None:
    """A fresh memory cgroup under this process's own, capped at limit_bytes (swap
    included); None where the machine gives us none to write."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    v1 = next((path for _, controllers, path in lines if "memory" in controllers.split(",")), None)
    if v1 is not None:
        parent, limits = f"{CGROUP_ROOT}/memory{v1}", {"memory.limit_in_bytes": limit_bytes}
        limits["memory.memsw.limit_in_bytes"] = limit_bytes
    else:
        v2 = next((path for _, controllers, path in lines if controllers == ""), None)
        if v2 is None:
            return None
        parent, limits = f"{CGROUP_ROOT}{v2}", {"memory.max": limit_bytes, "memory.swap.max": 0}
    path = os.path.join(parent.rstrip("/"), name)
    try:
        os.mkdir(path)
    except FileExistsError:  # an earlier run's under this uid, not yet removable: emptied and reused
        kill_members(path)
    except OSError:
        return None
    for i, (file, value) in enumerate(limits.items()):
        try:
            with open(os.path.join(path, file), "w") as f:
                f.write(str(value))
        except OSError:
            if i == 0:  # the memory cap itself: without it the cgroup is no use
                remove_cgroup(path)
                return None
    return path


def kill_members(cgroup: str) -> None:
    try:
        with open(os.path.join(cgroup, "cgroup.procs")) as f:
            pids = [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def remove_cgroup(path: str, wait: bool = True) -> None:
    """Kill what is left in the cgroup, then remove it. Its processes may take a moment to
    leave it (a zombie stays until reaped); without ``wait`` a busy cgroup is left for the
    uid's next run to reuse."""
    for _ in range(100 if wait else 1):
        kill_members(path)
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if wait:
                time.sleep(0.01)


def _exited(pid: int) -> bool:
    """Whether pid has exited, without reaping it (its pid must stay ours for the kill)."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None and info.si_pid == pid


def _read_capped(
    process: subprocess.Popen, streams: list, cap: int, deadline: float, on_exit
) -> tuple[list, bool, bool]:
    """([bytes of each stream], truncated, timed_out): read the pipes up to cap bytes each
    until they close. When the program exits, on_exit() kills what it left behind: a child
    holding a pipe open cannot then stall the read, and what is already in the pipes
    is still read. timed_out means the program itself was still running at deadline."""
    buffers, truncated = {stream: bytearray() for stream in streams}, False
    selector = selectors.DefaultSelector()
    for stream in buffers:
        selector.register(stream, selectors.EVENT_READ)
    try:
        pidfd, tick = os.pidfd_open(process.pid), None  # readable once the program exits
        selector.register(pidfd, selectors.EVENT_READ)
    except (AttributeError, OSError):  # kernels before 5.3: poll instead
        pidfd, tick = None, 0.05
    exited = timed_out = False
    try:
        while len(selector.get_map()) > (0 if exited or pidfd is None else 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = not exited and not _exited(process.pid)
                break
            events = selector.select(timeout=min(remaining, tick or 0.5))
            exit_seen = any(key.fileobj == pidfd for key, _ in events) if pidfd is not None else True
            if not exited and exit_seen and _exited(process.pid):
                exited = True
                if pidfd is not None:
                    selector.unregister(pidfd)
                on_exit()
            for key, _ in events:
                if key.fileobj == pidfd:
                    continue
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer = buffers[key.fileobj]
                room = cap - len(buffer)
                if room > 0:
                    buffer += chunk[:room]
                truncated |= len(chunk) > room
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return [bytes(buffers[stream]) for stream in streams], truncated, timed_out


def _open_sandbox_init(status_fd: int, bwrap_pid: int, deadline: float) -> tuple[int | None, bytes]:
    """(a pidfd of the sandbox's init, what was read of bwrap's status): bwrap reports the
    pid of its child, the init of the sandbox's PID namespace, in its first status line.
    None when bwrap could not start it, or it was gone before the pidfd was opened."""
    read, poller = b"", select.poll()
    poller.register(status_fd, select.POLLIN)
    while b"\n" not in read and (remaining := deadline - time.monotonic()) > 0:
        if not poller.poll(remaining * 1000):
            break
        chunk = os.read(status_fd, 4096)
        if not chunk:
            break
        read += chunk
    try:
        child_pid = json.loads(read.split(b"\n", 1)[0])["child-pid"]
        pidfd = os.pidfd_open(child_pid)
    except (ValueError, KeyError, OSError, AttributeError):
        return None, read
    try:  # still bwrap's child, so the pid was not reused
        with open(f"/proc/{child_pid}/stat") as f:
            if int(f.read().rsplit(")", 1)[1].split()[1]) == bwrap_pid:
                return pidfd, read
    except (OSError, ValueError, IndexError):
        pass
    os.close(pidfd)
    return None, read


def _end_sandbox(pidfd: int | None, wait_s: float = 10.0) -> None:
    """Kill the sandbox's init and wait until it has exited: the kernel kills and reaps
    every other process of its PID namespace before that, so when this returns nothing
    the program started is alive (killing bwrap alone ends them a moment later)."""
    if pidfd is None:
        return
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:  # exited already
        pass
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.poll(wait_s * 1000)
    os.close(pidfd)


def _kill(process: subprocess.Popen) -> None:
    """Kill bwrap; its PID namespace, and every process the program started, dies with it."""
    if process.returncode is not None:  # reaped: its pid may be another process's now
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _classify(returncode: int | None, stderr: str, timed_out: bool) -> str:
    if timed_out or returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return "timeout"
    if returncode == 0:
        return "ok"
    last_lines = "\n".join(stderr.strip().splitlines()[-3:])
    if "MemoryError" in last_lines or returncode == -signal.SIGSEGV:
        return "memory"
    if any(marker in last_lines for marker in BLOCKED_MARKERS) or "BlockingIOError" in last_lines:
        return "blocked"
    return "error"


def run_python(
    code: str,
    timeout_s: float = 10.0,
    memory_mb: int = 512,
    max_procs: int = 16,
    max_output_bytes: int = 1_000_000,
    max_file_mb: int = 16,
    with_result: bool = False,
) -> SandboxResult:
    """Run ``code`` with ``python3 -I`` (isolated mode: no user site, no env paths) in the sandbox.

    ``with_result``: the program also gets a result channel apart from its stdout, a pipe
    whose descriptor is in its environment as ``AFM_RESULT_FD``; what it writes there
    (up to ``max_output_bytes``) comes back as ``result``. A harness that runs the
    program's code writes its results there, so nothing the code prints passes for them."""
    if not 0 < timeout_s < float("inf"):  # a negative limit would mean none at all
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout_s}")
    for name, value in (("memory_mb", memory_mb), ("max_procs", max_procs), ("max_output_bytes", max_output_bytes)):
        if value < 1:
            raise ValueError(f"{name} must be 1 or more, got {value}")
    if sys.platform != "linux":
        raise SandboxUnavailable("the sandbox needs Linux namespaces")
    user = SandboxUser(memory_mb)
    try:
        return _run(user, code, timeout_s, memory_mb, max_procs, max_output_bytes, max_file_mb, with_result)
    finally:
        user.release()


def _limit(user: SandboxUser, memory_mb: int, cpu_s: int, max_file_mb: int) -> None:
    """In the child, before bwrap runs (bwrap and the program inherit these)."""
    import resource

    user.enter()
    limits = {
        resource.RLIMIT_AS: memory_mb * 2**20,
        resource.RLIMIT_CPU: cpu_s,
        resource.RLIMIT_FSIZE: max_file_mb * 2**20,
        resource.RLIMIT_NOFILE: 64,
        resource.RLIMIT_CORE: 0,
    }
    for kind, value in limits.items():
        resource.setrlimit(kind, (value, value))


def _run(
    user: SandboxUser,
    code: str,
    timeout_s: float,
    memory_mb: int,
    max_procs: int,
    max_output_bytes: int,
    max_file_mb: int,
    with_result: bool,
) -> SandboxResult:
    started = time.monotonic()
    code_fd = os.memfd_create("main.py")
    status_read, status_write = os.pipe()
    result_read, result_write = os.pipe() if with_result else (None, None)
    env = {"PATH": "/usr/bin:/bin", "HOME": WORKDIR, "LANG": "C.UTF-8"}
    if with_result:
        env["AFM_RESULT_FD"] = str(result_write)
    try:
        os.write(code_fd, code.encode())
        os.lseek(code_fd, 0, os.SEEK_SET)
        process = subprocess.Popen(
            bwrap_argv(sandbox_python(), code_fd, status_write, max_file_mb, max_procs),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            pass_fds=(code_fd, status_write) + ((result_write,) if with_result else ()),
            start_new_session=True,
            preexec_fn=lambda: _limit(user, memory_mb, max(1, int(timeout_s) + 1), max_file_mb),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        for fd in (status_read, result_read):
            if fd is not None:
                os.close(fd)
        raise SandboxUnavailable(f"cannot isolate code on this machine: {exc}") from None
    finally:
        for fd in (code_fd, status_write, result_write):
            if fd is not None:
                os.close(fd)
    streams = [process.stdout, process.stderr] + ([os.fdopen(result_read, "rb")] if with_result else [])
    init_pidfd, status = None, b""
    try:
        init_pidfd, status = _open_sandbox_init(status_read, process.pid, started + timeout_s)
        (stdout, stderr, *result), truncated, timed_out = _read_capped(
            process, streams, max_output_bytes, started + timeout_s, on_exit=lambda: _kill(process)
        )
        if timed_out:
            _kill(process)
        try:
            returncode = process.wait(timeout=max(0.1, started + timeout_s - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill(process)
            returncode = process.wait()
    finally:
        _kill(process)
        _end_sandbox(init_pidfd)
        if with_result:
            streams[2].close()
        with os.fdopen(status_read, "rb") as f:
            status += f.read()
    if b'"child-pid"' not in status:  # bwrap could not set the sandbox up: the program never ran
        reason = stderr.decode(errors="replace").strip().splitlines()
        raise SandboxUnavailable(f"cannot isolate code on this machine: {reason[-1] if reason else returncode}")
    if returncode > 128:  # bwrap exits 128 + N for a program killed by signal N
        returncode = 128 - returncode
    if returncode >= 0:  # it exited on its own, if only just before the kill: report that
        timed_out = False
    text_err = stderr.decode(errors="replace")
    status = "memory" if user.out_of_memory() else _classify(returncode, text_err, timed_out)
    return SandboxResult(
        status=status,
        stdout=stdout.decode(errors="replace"),
        stderr=text_err,
        returncode=returncode,
        duration_s=round(time.monotonic() - started, 3),
        truncated=truncated,
        result=result[0].decode(errors="replace") if result else "",
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run an untrusted Python file in the sandbox; print one JSON result.")
    parser.add_argument("file")
    parser.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds (CPU limit follows it)")
    parser.add_argument("--memory_mb", type=int, default=512, help="address-space limit")
    parser.add_argument("--max_procs", type=int, default=16, help="processes the program may run at once")
    parser.add_argument("--max_output_bytes", type=int, default=1_000_000, help="kept of stdout and of stderr each")
    args = parser.parse_args(argv)
    try:
        with open(args.file, encoding="utf-8") as f:
            code = f.read()
        result = run_python(code, args.timeout, args.memory_mb, args.max_procs, args.max_output_bytes)
    except (OSError, ValueError, SandboxUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
