"""bench/grpc_floor.py: the bare relays carry every message and request, and leave nothing running."""

import os
from pathlib import Path

from bench import grpc_floor, report


def _floor_processes() -> list[int]:
    """Processes of this test's floor still alive (their command line names the module)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"bench.grpc_floor\x00--role" in cmdline:
                found.append(int(entry.name))
    return found


def test_the_floor_carries_every_message_and_request_and_stops_its_processes():
    before = set(_floor_processes())
    floor = grpc_floor.measure(streams=4, step_s=0.001, tokens=16, unary_runs=((1, 8), (4, 16)))
    assert floor["messages"] == 4 * 16  # every message of every stream, through both relays
    assert set(floor["cpu_us_per_message"]) == {"source", "grpc-relay", "http-relay"}
    assert floor["grpc_read_messages"] == 4 * 16
    # CPU is read in clock ticks (10 ms): a run this small may round to 0, never below
    assert all(us >= 0 for us in floor["cpu_us_per_message"].values()) and floor["grpc_read_us_per_message"] >= 0
    for key in ("unary@1", "unary@4"):
        run = floor[key]
        assert run["relays_rps"] > 0 and run["direct_rps"] > 0
        assert run["relays_cpu_ms_per_request"] >= 0
    assert set(_floor_processes()) <= before  # killed and waited for
    rows = report.floor_rows({"floor": floor})
    assert any("both relays" in row for row in rows) and sum(row.startswith("| 4 |") for row in rows) == 1
    assert os.getpid() not in _floor_processes()


def test_a_floor_that_failed_is_reported_as_such():
    assert report.floor_rows({"floor": {"error": "RuntimeError: boom"}}) == ["Not measured: RuntimeError: boom"]
