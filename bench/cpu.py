"""CPU time per process group of the stack (a Triton's python-backend stubs count with their Triton)
and of this benchmark process, read from /proc: where the cores go on each path."""

from __future__ import annotations

import os
from pathlib import Path

from local.stack import LocalStack

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _group_cpu_s(pgids: dict[int, str]) -> dict[str, float]:
    totals = dict.fromkeys(pgids.values(), 0.0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        name = pgids.get(int(fields[2]))
        if name is not None:
            totals[name] += (int(fields[11]) + int(fields[12])) * TICK_S  # utime + stime
    return totals


class CpuMeter:
    """`snapshot()` before and after a run; `per_unit()` turns the difference into ms per request or token."""

    def __init__(self, stack: LocalStack) -> None:
        self._pgids = {proc.pid: name for name, proc in stack.children().items()}

    def snapshot(self) -> dict[str, float]:
        times = os.times()
        return {"load generator (this process)": times.user + times.system, **_group_cpu_s(self._pgids)}

    @staticmethod
    def per_unit(before: dict[str, float], after: dict[str, float], units: float) -> dict[str, float]:
        used = {name: after[name] - before[name] for name in after}
        return {name: round(seconds * 1000 / units, 3) for name, seconds in used.items() if seconds > 0}
