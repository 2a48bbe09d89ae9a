"""Run untrusted Python (model output, code-execution rewards) inside limits.

    python -m afm_trainer.tools.sandbox [--timeout S] [--memory_mb M] FILE.py
    # prints one JSON object: {"status", "stdout", "stderr", "returncode", "duration_s", "truncated"}

    from afm_trainer.tools.sandbox import run_python
    result = run_python("print(1 + 1)", timeout_s=5)

status: "ok" (exit 0), "timeout" (wall or CPU time), "memory" (allocation refused),
"blocked" (a sandbox rule stopped it: network, file system outside its folder, process
count), "error" (any other failure).

The result is the main program's: a run ends when it exits, even if processes it
started still hold stdout open; those are killed then, and status and returncode come
from the main program's exit alone (so "ok" always means returncode 0). On a timeout
the main program is killed, so returncode is -9 (-SIGKILL), or -24 (-SIGXCPU) when
the CPU limit hit first.

How each limit is enforced (Linux), in the child between fork and exec:
- a fresh network namespace: no interface but a downed loopback, so no connection
  leaves, not even to 127.0.0.1 of the host;
- a fresh mount namespace with small private tmpfs over /tmp, /var/tmp and /dev/shm:
  the program's working folder is a new empty folder there, nothing it writes survives,
  and the rest of the file system is read-only to it because
- it runs under a user id of its own (not root, not shared with another run), so it can
  write nowhere else, and RLIMIT_NPROC caps its processes (a fork bomb hits the cap);
- rlimits: CPU seconds, address space (memory), file size, open files, no core dumps;
- a seccomp filter denies new user namespaces (unshare or clone with CLONE_NEWUSER
  fail with EPERM): inside one the program would be root again, able to mount and to
  reach kernel code that unprivileged users cannot;
- wall time from the parent, which then kills every process of that user id;
- stdout/stderr are read up to a cap each; the rest is drained and dropped (flagged).
Namespaces need root or unprivileged user namespaces; without either the sandbox
refuses to run (``SandboxUnavailable``) rather than run code unconfined.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWUSER = 0x00020000, 0x40000000, 0x10000000
MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV = 0x4000, 0x40000, 0x2, 0x4
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
# audit arch, then syscall numbers of unshare, clone, clone3
SECCOMP_ARCHES = {"x86_64": (0xC000003E, 272, 56, 435), "aarch64": (0xC00000B7, 97, 220, 435)}
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
WORKDIR = "/tmp/sandbox"
FIRST_UID = 200_000  # sandbox user ids: no real account uses these
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
    """This machine cannot isolate code (no root, no user namespaces)."""


@dataclass
class SandboxResult:
    status: str
    stdout: str
    stderr: str
    returncode: int | None
    duration_s: float
    truncated: bool = False


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _deny_user_namespaces() -> None:
    """Install a seccomp filter: unshare/clone with CLONE_NEWUSER get EPERM, and clone3
    ENOSYS (its flags sit in memory a filter cannot read; glibc then falls back to clone).
    Other architectures than this machine's (32-bit entry points, x32) get EPERM for all."""
    machine = os.uname().machine  # no import here: after setuid the stdlib may be unreadable
    if machine not in SECCOMP_ARCHES:
        raise OSError(f"no seccomp filter for {machine}")
    arch, nr_unshare, nr_clone, nr_clone3 = SECCOMP_ARCHES[machine]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    program = [
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, arch),
        (ret, 0, 0, eperm),
        (ld, 0, 0, 0),  # seccomp_data.nr
        (jge, 0, 1, 0x40000000),  # the x32 ABI shares x86_64's arch value
        (ret, 0, 0, eperm),
        (jeq, 0, 1, nr_clone3),
        (ret, 0, 0, enosys),
        (jeq, 1, 0, nr_unshare),
        (jeq, 0, 3, nr_clone),
        (ld, 0, 0, 16),  # low half of args[0], the flags of both
        (jset, 0, 1, CLONE_NEWUSER),
        (ret, 0, 0, eperm),
        (ret, 0, 0, allow),
    ]
    filters = (_SockFilter * len(program))(*program)
    fprog = _SockFprog(len(program), filters)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl no_new_privs")
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "prctl seccomp")


def sandbox_python() -> str:
    """An interpreter the sandbox user may execute: the system one when the running one
    lives under a private home (a venv or pyenv under /root is closed to other users)."""
    candidates = [os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"]
    for path in candidates:
        parts = path.split(os.sep)
        folders = [os.sep.join(parts[:i]) or "/" for i in range(1, len(parts))]
        if os.path.isfile(path) and all(os.stat(d).st_mode & 0o001 for d in folders) and os.stat(path).st_mode & 0o001:
            return path
    raise SandboxUnavailable("no Python interpreter that other users may run (tried: " + ", ".join(candidates) + ")")


_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


def _acquire_uid() -> int:
    """A uid no other run holds, so limits and the final kill apply to this run only.
    Runs may overlap (verl scores rewards in threads); each process owns 100 uids."""
    base = FIRST_UID + (os.getpid() % 10_000) * 100
    with _uid_lock:
        for uid in range(base, base + 100):
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid
    raise SandboxUnavailable("more than 100 sandboxed runs at once in one process")


def _confine(uid: int, code: bytes, memory_mb: int, cpu_s: int, max_procs: int, max_file_mb: int):
    """Runs in the child after fork, before exec: namespaces, private folders, limits, user."""
    import resource

    os.setsid()
    if os.geteuid() == 0:
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET), "unshare")
    else:  # an unprivileged user namespace makes us root inside it, for the mounts
        real_uid, real_gid = os.getuid(), os.getgid()
        _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET), "unshare")
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {real_uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {real_gid} 1")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount private")
    for folder in PRIVATE_DIRS:
        if os.path.isdir(folder):
            _check(
                _libc.mount(
                    b"tmpfs",
                    folder.encode(),
                    b"tmpfs",
                    MS_NOSUID | MS_NODEV,
                    f"size={max_file_mb * 2}m,mode=1777".encode(),
                ),
                f"mount {folder}",
            )
    os.mkdir(WORKDIR, 0o700)
    with open(os.path.join(WORKDIR, "main.py"), "wb") as f:
        f.write(code)
    try:
        os.chown(WORKDIR, uid, uid)
        os.chown(os.path.join(WORKDIR, "main.py"), uid, uid)
    except OSError:
        pass  # in a user namespace the sandbox user is us, and owns these already
    os.chdir(WORKDIR)
    limits = {
        resource.RLIMIT_AS: memory_mb * 2**20,
        resource.RLIMIT_CPU: cpu_s,
        resource.RLIMIT_FSIZE: max_file_mb * 2**20,
        resource.RLIMIT_NOFILE: 64,
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_NPROC: max_procs,
    }
    for kind, value in limits.items():
        resource.setrlimit(kind, (value, value))
    try:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    except OSError:
        # Inside an unprivileged user namespace only our own id is mapped; the
        # namespace itself then separates us from the host's files and processes.
        pass
    _deny_user_namespaces()  # last: nothing above may be filtered


def _exited(pid: int) -> bool:
    """Whether pid has exited, without reaping it (its pid must stay ours for the kill)."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None and info.si_pid == pid


def _read_capped(process: subprocess.Popen, cap: int, deadline: float, on_exit) -> tuple[bytes, bytes, bool, bool]:
    """(stdout, stderr, truncated, timed_out): read both pipes up to cap bytes each until
    they close. When the program exits, on_exit() kills what it left behind: a child
    holding a pipe open cannot then stall the read, and what is already in the pipes
    is still read. timed_out means the program itself was still running at deadline."""
    buffers, truncated = {process.stdout: bytearray(), process.stderr: bytearray()}, False
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
    return bytes(buffers[process.stdout]), bytes(buffers[process.stderr]), truncated, timed_out


def _live_pids_of(uid: int) -> list[int]:
    """Processes of uid that are not zombies (a zombie is already dead, awaiting its reaper)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(pid))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return pids


def _kill_all(uid: int, process: subprocess.Popen) -> None:
    """Kill the run's process group and every process left under its user id, pass after
    pass, since a fork bomb forks again between the listing and the kill."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for _ in range(200):
        pids = _live_pids_of(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


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
) -> SandboxResult:
    """Run ``code`` with ``python3 -I`` (isolated mode: no user site, no env paths) in the sandbox."""
    if not 0 < timeout_s < float("inf"):  # a negative limit would mean none at all
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout_s}")
    for name, value in (("memory_mb", memory_mb), ("max_procs", max_procs), ("max_output_bytes", max_output_bytes)):
        if value < 1:
            raise ValueError(f"{name} must be 1 or more, got {value}")
    if sys.platform != "linux":
        raise SandboxUnavailable("the sandbox needs Linux namespaces")
    uid = _acquire_uid()
    try:
        return _run_as(uid, code, timeout_s, memory_mb, max_procs, max_output_bytes, max_file_mb)
    finally:
        with _uid_lock:
            _uids_in_use.discard(uid)


def _run_as(
    uid: int, code: str, timeout_s: float, memory_mb: int, max_procs: int, max_output_bytes: int, max_file_mb: int
) -> SandboxResult:
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            [sandbox_python(), "-I", "-S", f"{WORKDIR}/main.py"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "HOME": WORKDIR, "LANG": "C.UTF-8"},
            preexec_fn=lambda: _confine(
                uid, code.encode(), memory_mb, max(1, int(timeout_s) + 1), max_procs, max_file_mb
            ),
        )
    except subprocess.SubprocessError as exc:
        raise SandboxUnavailable(f"cannot isolate code on this machine: {exc}") from None
    try:
        stdout, stderr, truncated, timed_out = _read_capped(
            process, max_output_bytes, started + timeout_s, on_exit=lambda: _kill_all(uid, process)
        )
        if timed_out:
            _kill_all(uid, process)
        try:
            returncode = process.wait(timeout=max(0.1, started + timeout_s - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_all(uid, process)
            returncode = process.wait()
    finally:
        _kill_all(uid, process)  # whatever it left behind (daemonised children)
    if returncode >= 0:  # it exited on its own, if only just before the kill: report that
        timed_out = False
    text_err = stderr.decode(errors="replace")
    return SandboxResult(
        status=_classify(returncode, text_err, timed_out),
        stdout=stdout.decode(errors="replace"),
        stderr=text_err,
        returncode=returncode,
        duration_s=round(time.monotonic() - started, 3),
        truncated=truncated,
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
