"""`make run` as a user starts it: a subprocess in a clean environment (only PATH, HOME and the ports),
its banner awaited and read, SIGTERM to end it, and what it leaves behind checked."""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from local.processes import PR_SET_PDEATHSIG, free_ports
from local.stack import MODALITIES, ROOT, StackConfig

READY_S = 900  # a first `make run` may still install what is missing
STOP_S = 90  # the façade's and the services' grace periods, then Tritons' exit timeout, one after the other
_DEFAULTS = StackConfig(api_key="", run_dir=ROOT)  # what make run uses when nothing is set
REPLICA_PORT_STEP = _DEFAULTS.replica_port_step
DEFAULT_BASE_URL = _DEFAULTS.base_url


def _terminate_with_parent() -> None:  # in the child, before exec: a test run killed outright stops its stack
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def clean_environment(**extra: str) -> dict[str, str]:
    """What `env -i PATH=... HOME=...` leaves: no PYTHONPATH, no venv, nothing of the test's own."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), **extra}


def _port_free(port: int) -> bool:
    """Nothing listens on it (connections of the test's own clients in TIME_WAIT don't count: servers bind
    with SO_REUSEADDR, and so does this check)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def stack_ports(text_replicas: int) -> dict[str, str]:
    """HUBMESH_*_PORT settings for one `make run`: free ports, replica i's Tritons at + 100 × i free too."""
    kinds = 1 + len(MODALITIES) * 5
    for _ in range(50):
        ports = free_ports(kinds)
        text_triton = ports[3:6]
        extra = [p + REPLICA_PORT_STEP * i for i in range(1, text_replicas) for p in text_triton]
        if all(p < 65536 and _port_free(p) for p in extra) and not set(extra) & set(ports):
            break
    else:
        raise RuntimeError("no free ports for make run")
    free = iter(ports)
    env = {"HUBMESH_HTTP_PORT": str(next(free))}
    for m in MODALITIES:
        env[f"HUBMESH_{m.env_prefix}_PORT"] = str(next(free))
        env[f"HUBMESH_{m.env_prefix}_METRICS_PORT"] = str(next(free))
        env[f"HUBMESH_{m.env_prefix}_TRITON_PORTS"] = ",".join(str(next(free)) for _ in range(3))
    env["HUBMESH_TEXT_REPLICAS"] = str(text_replicas)
    return env


@dataclass
class MakeRun:
    """One `make run` in its own process group, its output read line by line."""

    env: dict[str, str]
    run_dir: Path
    proc: subprocess.Popen | None = None
    lines: list[str] = field(default_factory=list)
    _new: queue.Queue = field(default_factory=queue.Queue)
    launcher_pid: int = 0
    api_key: str = ""
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def http_port(self) -> int:
        return int(self.env["HUBMESH_HTTP_PORT"])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1"

    def ports(self) -> list[int]:
        ports = [int(v) for k, v in self.env.items() if k.endswith("_PORT")]
        for k, v in self.env.items():
            if k.endswith("_TRITON_PORTS"):
                replicas = int(self.env.get(k.replace("_TRITON_PORTS", "_REPLICAS"), "1"))
                ports += [int(p) + REPLICA_PORT_STEP * i for p in v.split(",") for i in range(replicas)]
        return ports

    def start(self) -> None:
        self.env["HUBMESH_RUN_DIR"] = str(self.run_dir)
        self.proc = subprocess.Popen(
            ["make", "--no-print-directory", "run"], cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            preexec_fn=_terminate_with_parent,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.launcher_pid = int(self.wait_for(r"\(launcher pid (\d+),", READY_S).group(1))
        banner = self.wait_for(r"^  API key  : (\S+)", READY_S)
        self.api_key = banner.group(1)
        processes = self.wait_for(r"processes: (.*)$", 60).group(1)
        self.pids = {name: int(pid) for name, pid in re.findall(r"([\w-]+) \(pid (\d+)\)", processes)}

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put(None)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match:
        """The first line of output (old or new) that matches `pattern`; fails on exit or timeout."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if match := compiled.search(line):
                    return match
            seen = len(self.lines)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"make run printed no line like {pattern!r} in {timeout_s:.0f} s:\n{self.output()}")
            try:
                if self._new.get(timeout=min(remaining, 1.0)) is None and not any(
                    compiled.search(line) for line in self.lines[seen:]
                ):
                    raise AssertionError(f"make run exited ({self.proc.poll()}) before {pattern!r}:\n{self.output()}")
            except queue.Empty:
                pass

    def output(self) -> str:
        return "\n".join(self.lines[-80:])

    def stop(self) -> None:
        """SIGTERM to `make` (as `kill` would send it); returns once make has passed it on to the launcher,
        the launcher has stopped everything and said so, and make has exited as SIGTERM asks."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_S)
            self.wait_for(r" stopped$", 5)  # the launcher's last words, after every child is gone
            assert code == -signal.SIGTERM, f"make exited with {code}, not by the SIGTERM it was sent"
        finally:
            with contextlib.suppress(ProcessLookupError):  # never leave a stack behind a failed test
                os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in self.every_pid().values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)

    def every_pid(self) -> dict[str, int]:
        """Every process group make run said it started, restarts included (name#n for the n-th)."""
        pids: dict[str, int] = {}
        for line in self.lines:
            for name, pid in re.findall(r"([\w-]+)(?: again)? \(pid (\d+)\)", line):
                pids[name if name not in pids else f"{name}#{len(pids)}"] = int(pid)
        return pids

    def leftovers(self) -> list[str]:
        """What this `make run` left behind: live process groups, bound ports, new /dev/shm regions."""
        left = []
        for name, pid in self.every_pid().items():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, 0)
                left.append(f"process group of {name} ({pid})")
        left += [f"port {p}" for p in self.ports() if not _port_free(p)]
        # Triton's regions are named after the launcher's pid (local/stack.py): other stacks' are not ours
        left += [f"/dev/shm/{r}" for r in os.listdir("/dev/shm") if re.match(rf"hubmesh{self.launcher_pid}[a-z]", r)]
        return left
