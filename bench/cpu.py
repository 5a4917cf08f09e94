"""Where the stack's resources go, read from /proc: CPU time per process group (a Triton's
python-backend stubs count with their Triton) and of this benchmark process; resident memory of
each process."""

from __future__ import annotations

import os
from pathlib import Path

from local.stack import LocalStack

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _processes():
    """(pid, process group, CPU seconds) of every process (utime + stime from /proc/<pid>/stat)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(f"/proc/{entry}/stat")
        if fields is not None:
            yield int(entry), int(fields[2]), (int(fields[11]) + int(fields[12])) * TICK_S


def _stat_fields(path: str) -> list[str] | None:
    """The fields of a /proc stat file after "pid (comm)": state ppid pgrp ... utime (11) stime (12);
    None when the process or thread is gone."""
    try:
        return Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _group_cpu_s(pgids: dict[int, str]) -> dict[str, float]:
    totals = dict.fromkeys(pgids.values(), 0.0)
    for _, pgid, cpu_s in _processes():
        name = pgids.get(pgid)
        if name is not None:
            totals[name] += cpu_s
    return totals


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _triton_groups(stack: LocalStack) -> dict[str, int]:
    """Process group of every Triton replica, by its name in stack.children() (triton-text, triton-text-1, ...)."""
    return {name: proc.pid for name, proc in stack.children().items()
            if name.startswith("triton-") and proc is not None}


def process_memory(stack: LocalStack) -> dict[str, float]:
    """RSS of each process of the stack; each Triton's python-backend stubs (one per model instance)
    are added up on their own line."""
    out = {name: rss_mib(proc.pid) for name, proc in stack.children().items() if proc is not None}
    tritons = {pgid: name for name, pgid in _triton_groups(stack).items()}
    for pid, pgid, _ in _processes():
        if pgid in tritons and pid != pgid:  # started by that Triton: its model stubs
            key = f"{tritons[pgid]} python stubs"
            out[key] = out.get(key, 0.0) + rss_mib(pid)
    return out


class CpuMeter:
    """`snapshot()` before and after a run; `per_unit()` turns the difference into ms per request or token."""

    def __init__(self, stack: LocalStack) -> None:
        self._pgids = {proc.pid: name for name, proc in stack.children().items() if proc is not None}

    def snapshot(self) -> dict[str, float]:
        times = os.times()
        return {"load generator (this process)": times.user + times.system, **_group_cpu_s(self._pgids)}

    @staticmethod
    def per_unit(before: dict[str, float], after: dict[str, float], units: float) -> dict[str, float]:
        used = {name: after[name] - before[name] for name in after}
        return {name: round(seconds * 1000 / units, 3) for name, seconds in used.items() if seconds > 0}


# what each thread of a mesh process is, by its kernel name (Python's threads all share the
# interpreter's; the event loop's is the process's first)
EVENT_LOOP = "event loop"
GRPC_ENGINE = "gRPC EventEngine"
OTHER_THREADS = "other threads (grpc.aio poller, ...)"


def thread_cpu_s(pid: int) -> dict[str, tuple[float, float]]:
    """(user, kernel) CPU seconds of one process's threads, grouped as EVENT_LOOP, GRPC_ENGINE and
    OTHER_THREADS (threads that ended in between are lost: the mesh's live as long as their process)."""
    groups: dict[str, tuple[float, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for tid in tids:
        fields = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue  # the thread is gone
        if fields is None:
            continue
        group = EVENT_LOOP if int(tid) == pid else GRPC_ENGINE if comm == "event_engine" else OTHER_THREADS
        user, kernel = groups.get(group, (0.0, 0.0))
        groups[group] = (user + int(fields[11]) * TICK_S, kernel + int(fields[12]) * TICK_S)
    return groups


def thread_us_per_unit(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]],
                       units: float) -> dict[str, dict[str, float]]:
    """µs of user and kernel CPU per unit (token, request) of each thread group, between two thread_cpu_s()."""
    out = {}
    for group, (user, kernel) in sorted(after.items()):
        was_user, was_kernel = before.get(group, (0.0, 0.0))
        out[group] = {"user": round(1e6 * (user - was_user) / units, 1),
                      "kernel": round(1e6 * (kernel - was_kernel) / units, 1)}
    return out
