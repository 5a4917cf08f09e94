"""make run's supervision (local/supervisor.py) with real child processes and a clock the test moves:
restarts with backoff after a clean exit or a kill, the status line, the façade's exit and a crash loop
ending the stack."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from local.supervisor import (
    BACKOFF_MAX_S, CRASH_LOOP_EXITS, StackFailed, Supervisor, Unit, describe_exit,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Child:
    """A unit around a real short-lived (or sleeping) process."""

    def __init__(self, name: str, code: str = "import time; time.sleep(60)", essential: bool = False) -> None:
        self.code = code
        self.current: subprocess.Popen | None = None
        self.started = 0
        self.cleaned = 0
        self.is_ready = True
        self.unit = Unit(name=name, proc=lambda: self.current, start=self.start, cleanup=self.cleanup,
                         ready=lambda: self.is_ready, log_path=f"/tmp/{name}.log", essential=essential)
        self.start()

    def start(self) -> subprocess.Popen:
        self.current = subprocess.Popen([sys.executable, "-c", self.code])
        self.started += 1
        return self.current

    def cleanup(self) -> None:
        self.cleaned += 1

    def kill(self) -> None:
        self.current.kill()
        self.current.wait()

    def stop(self) -> None:
        if self.current.poll() is None:
            self.kill()


@pytest.fixture
def children():
    made: list[Child] = []

    def make(*args, **kwargs) -> Child:
        made.append(Child(*args, **kwargs))
        return made[-1]

    yield make
    for child in made:
        child.stop()


def test_exit_codes_read_as_a_person_would():
    assert describe_exit(3) == "code 3"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-15) == "killed by SIGTERM"


def test_a_killed_process_is_started_again_after_its_backoff_and_shown_ready(children, caplog):
    caplog.set_level(logging.INFO, "hubmesh")
    clock = Clock()
    triton, facade = children("triton-text"), children("facade", essential=True)
    supervisor = Supervisor([triton.unit, facade.unit], clock)
    supervisor.tick()
    assert triton.started == 1 and not caplog.records  # nothing changed: nothing said

    triton.kill()
    supervisor.tick()
    assert "triton-text exited (killed by SIGKILL); starting it again in 1 s (see /tmp/triton-text.log)" in caplog.text
    assert "status: triton-text restarting (killed by SIGKILL, in 1 s), facade up" in caplog.text
    supervisor.tick()
    assert triton.started == 1  # not before its backoff

    clock.now += 1
    triton.is_ready = False
    supervisor.tick()
    assert triton.started == 2 and triton.cleaned == 1
    assert f"started triton-text again (pid {triton.current.pid})" in caplog.text
    assert supervisor.status() == "triton-text starting, facade up"

    clock.now += 1
    triton.is_ready = True
    supervisor.tick()
    assert "triton-text is ready again" in caplog.text
    assert supervisor.status() == "triton-text up, facade up"


def test_backoff_doubles_while_a_process_keeps_failing_and_resets_after_a_good_run(children):
    clock = Clock()
    service = children("text", code="raise SystemExit(3)")
    supervisor = Supervisor([service.unit], clock)
    delays = []
    for _ in range(4):
        service.current.wait()
        supervisor.tick()
        delays.append(service.unit.restart_at - clock.now)
        clock.now = service.unit.restart_at + 20  # 4 exits spread over more than a minute: no crash loop
        supervisor.tick()
    assert delays == [1, 2, 4, 8]
    assert service.unit.last_exit == "code 3"

    clock.now += 61  # up for longer than a minute before the next exit: back to the first backoff
    service.current.wait()
    supervisor.tick()
    assert service.unit.restart_at - clock.now == 1
    assert 2 ** 10 > BACKOFF_MAX_S  # the doubling is capped


def test_a_crash_loop_ends_the_stack_naming_the_log(children):
    clock = Clock()
    service = children("embeddings", code="raise SystemExit(1)")
    supervisor = Supervisor([service.unit], clock)
    with pytest.raises(StackFailed) as failure:
        for _ in range(CRASH_LOOP_EXITS):
            service.current.wait()
            supervisor.tick()
            clock.now = service.unit.restart_at
            supervisor.tick()
    assert str(failure.value) == (
        f"embeddings exited {CRASH_LOOP_EXITS} times within 60 s (last: code 1); stopping everything "
        "(see /tmp/embeddings.log)"
    )


def test_the_facade_exiting_ends_the_stack(children):
    facade = children("facade", code="raise SystemExit(2)", essential=True)
    supervisor = Supervisor([facade.unit], Clock())
    facade.current.wait()
    with pytest.raises(StackFailed, match=r"^facade exited \(code 2\); stopping everything \(see /tmp/facade.log\)$"):
        supervisor.tick()
