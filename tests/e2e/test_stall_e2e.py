"""A replica that hangs costs a stream no more than one that dies (real tritonserver, engine simulator,
text service, façade; bench/stalls.py has the scenarios): 18 seeded chat streams over 3 replicas,

- the busiest replica SIGSTOPped a third of the way through: every text equals the uninterrupted
  round's, no client sees an error, the round takes at most a few seconds longer; the replica gets no
  new request once it stalled, and after SIGCONT a canary admits it again within 5 s;
- the same with the link of a replica in its own network namespace cut, then restored;
- a saturated engine (waiting queue > 0) is slow, not hung: no stall is declared.

Figures: build/stalls.json (`python -m bench.stalls` runs them longer).
"""

from __future__ import annotations

import json

import pytest

from bench.stalls import STREAMS, Netns, StallStack, chat, hang_round, run_round, saturation
from local.stack import ROOT
from tests.e2e.figures import record as figures_record

pytestmark = pytest.mark.e2e
REPORT = ROOT / "build" / "stalls.json"
ADDED_S = 4.0  # the target is 2 s (docs/stalls.md has the figures); two shared cores leave some slack


def record(name: str, figures: dict) -> None:
    figures_record(REPORT, name, figures)


@pytest.fixture(scope="module")
def stalls(tmp_path_factory):
    stack = StallStack(tmp_path_factory.mktemp("stalls"), netns=Netns.available())
    stack.start()
    try:
        base = stack.stack.config.base_url
        run_round(base, [chat(i) for i in range(STREAMS)])  # every replica's pace measured
        stack.reference = run_round(base, [chat(i) for i in range(STREAMS)])
        assert not stack.reference["errors"]
        yield stack
    finally:
        stack.stop()


def check(figures: dict) -> None:
    assert figures["streams_on_replica_when_hung"] > 0, figures
    assert figures["client_errors"] == 0 and figures["wrong_texts"] == 0, figures
    assert figures["migrations"] > 0, figures
    # noticed by the stall guard or by the channel's keepalive, whichever is first (both ~2 s bounds)
    assert figures["noticed_after_s"] is not None and figures["noticed_by"] in ("stall", "keepalive"), figures
    assert figures["added_s"] <= ADDED_S, figures
    assert figures["requests_routed_there_after_noticed"] == 0, figures
    assert figures["back_in_service_after_s"] <= 5.0, figures


def test_a_frozen_replica_costs_a_stream_no_more_than_a_dead_one(stalls):
    figures = hang_round(stalls, "sigstop", stalls.reference)
    record("sigstop", figures)
    check(figures)
    lines = [json.loads(line) for line in (stalls.stack.logs / "text.log").read_text().splitlines()
             if line.startswith("{")]
    if figures["noticed_by"] == "stall":  # the access log says so
        assert any(s["replica"] == figures["replica"] and s["phase"] in ("first_token", "inter_token")
                   for line in lines for s in line.get("stalls", ()))
    assert any(line.get("migrations") for line in lines)  # and that the generations moved


def test_a_cut_link_is_noticed_and_healed(stalls):
    if stalls.ns is None:
        pytest.skip("needs root and ip netns")
    figures = hang_round(stalls, "partition", stalls.reference)
    record("partition", figures)
    check(figures)


def test_a_saturated_engine_is_slow_not_hung(stalls):
    figures = saturation(stalls, seconds=30)
    record("saturation", figures)
    assert figures["client_errors"] == 0 and figures["stalls"] == 0 and figures["migrations"] == 0, figures
    assert all(share is not None and share >= 0.8 for share in figures["share_of_samples_with_waiting"]), figures
