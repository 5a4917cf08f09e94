"""`make run`'s supervision: a Triton or a service that exits is started again with backoff, as a
kubelet restarts a container; only the façade exiting, or a process crashing in a loop, ends the stack.

The launcher's main thread calls `Supervisor.tick()` about twice a second (children die with the thread
that forked them, so every restart happens on that thread). Each change of state is logged with the exit
code and the log to read, followed by one status line of every process.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("hubmesh")

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
# a process that stayed up this long before exiting starts again at the first backoff
BACKOFF_RESET_AFTER_S = 60.0
# this many exits of one process within CRASH_LOOP_WINDOW_S end the stack
CRASH_LOOP_EXITS = 5
CRASH_LOOP_WINDOW_S = 60.0
READY_CHECK_EVERY_S = 1.0


class StackFailed(Exception):
    """The stack cannot go on: the façade exited, or a process crashed in a loop."""


def describe_exit(code: int) -> str:
    """'code 1', or 'killed by SIGKILL' for a negative Popen return code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"code {code}"


@dataclass
class Unit:
    """One supervised process: how to start it (without waiting), to clean up after it, to see it ready."""

    name: str
    proc: Callable[[], subprocess.Popen | None]  # the process running now
    start: Callable[[], subprocess.Popen]  # starts it again; returns at once
    cleanup: Callable[[], None]  # after an exit, before the next start (e.g. a Triton's /dev/shm)
    ready: Callable[[], bool]
    log_path: Path
    essential: bool = False  # its exit ends the stack (the façade)
    state: str = "up"  # up, restarting (waiting out its backoff), starting (not ready yet)
    started_at: float = field(default_factory=time.monotonic)
    exits: deque[float] = field(default_factory=deque)
    failures_in_a_row: int = 0
    restart_at: float = 0.0
    checked_at: float = 0.0
    last_exit: str = ""


class Supervisor:
    """Watches the units, restarts the ones that exit, and says what it did."""

    def __init__(self, units: list[Unit], clock: Callable[[], float] = time.monotonic) -> None:
        self.units = units
        self.clock = clock
        for unit in units:
            unit.started_at = clock()

    def tick(self) -> None:
        """One look at every unit; raises StackFailed when the stack must end."""
        changed = False
        for unit in self.units:
            changed |= self._tick(unit)
        if changed:
            log.info("status: %s", self.status())

    def status(self) -> str:
        parts = []
        for unit in self.units:
            if unit.state == "restarting":
                parts.append(f"{unit.name} restarting ({unit.last_exit}, in {max(unit.restart_at - self.clock(), 0):.0f} s)")
            else:
                parts.append(f"{unit.name} {unit.state}")
        return ", ".join(parts)

    def pids(self) -> str:
        return ", ".join(f"{u.name} (pid {p.pid})" for u in self.units if (p := u.proc()) is not None)

    def _tick(self, unit: Unit) -> bool:
        now = self.clock()
        proc = unit.proc()
        if unit.state in ("up", "starting") and proc is not None and proc.poll() is not None:
            self._exited(unit, proc.returncode, now)
            return True
        if unit.state == "restarting" and now >= unit.restart_at:
            unit.cleanup()
            new = unit.start()
            unit.state, unit.started_at, unit.checked_at = "starting", now, now
            log.info("started %s again (pid %d)", unit.name, new.pid)
            return True
        if unit.state == "starting" and now - unit.checked_at >= READY_CHECK_EVERY_S:
            unit.checked_at = now
            try:
                ready = unit.ready()
            except Exception:  # not up yet
                ready = False
            if ready:
                unit.state = "up"
                log.info("%s is ready again", unit.name)
                return True
        return False

    def _exited(self, unit: Unit, code: int, now: float) -> None:
        unit.last_exit = describe_exit(code)
        if unit.essential:
            raise StackFailed(f"{unit.name} exited ({unit.last_exit}); stopping everything (see {unit.log_path})")
        unit.exits.append(now)
        while unit.exits and now - unit.exits[0] > CRASH_LOOP_WINDOW_S:
            unit.exits.popleft()
        if len(unit.exits) >= CRASH_LOOP_EXITS:
            raise StackFailed(
                f"{unit.name} exited {len(unit.exits)} times within {CRASH_LOOP_WINDOW_S:.0f} s "
                f"(last: {unit.last_exit}); stopping everything (see {unit.log_path})"
            )
        if now - unit.started_at >= BACKOFF_RESET_AFTER_S:
            unit.failures_in_a_row = 0
        delay = min(BACKOFF_FIRST_S * 2 ** unit.failures_in_a_row, BACKOFF_MAX_S)
        unit.failures_in_a_row += 1
        unit.state, unit.restart_at = "restarting", now + delay
        log.error("%s exited (%s); starting it again in %.0f s (see %s)", unit.name, unit.last_exit, delay,
                  unit.log_path)
