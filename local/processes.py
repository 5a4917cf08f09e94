"""Child processes of the local stack: each in its own process group, dying with its parent."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # NB: "parent" is the *thread* that forked: start children from a thread that outlives them
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Starts cmd in a new process group; stdout and stderr go to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    try:
        return subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    finally:
        log.close()


def stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM to the child's process group, SIGKILL after timeout_s; then SIGKILL to whatever of the
    group outlived its leader (e.g. Triton's python stubs after the server itself died)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout_s)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    _wait_group_gone(proc.pid)


def _wait_group_gone(pgid: int, timeout_s: float = 10.0) -> None:
    """Until no process of the group is left (members killed a moment ago may still be exiting)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that nothing listens on right now (each socket stays
    bound until all are picked, so the kernel cannot hand out the same port twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def http_ok(url: str, headers: dict[str, str] | None = None, timeout_s: float = 5.0) -> bool:
    """Whether GET `url` answers 200 (an error status or an unreachable server raises)."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.status == 200


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen | None = None,
               log_path: Path | None = None) -> None:
    """Polls check() until it is true; fails early if proc exits, with the end of its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}{_tail(log_path)}")
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s{_tail(log_path)}")


def _tail(log_path: Path | None, lines: int = 30) -> str:
    if log_path is None or not log_path.exists():
        return ""
    text = log_path.read_text(errors="replace").splitlines()[-lines:]
    return "\n--- " + str(log_path) + " ---\n" + "\n".join(text)
