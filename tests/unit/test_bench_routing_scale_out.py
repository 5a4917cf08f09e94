"""bench/routing.py's table by text-service count (issue 29): the targets as ratios, the report's rows,
the chaos curve, from figures made up here (the runs themselves are `make bench`'s)."""

from __future__ import annotations

from bench.report import _scale_out_rows
from bench.routing import Outcome, Turn, chaos_curve, scale_label, targets


def run(ttft50, ttft99, hit, busiest, tokens=760.0):
    return {"ttft_p50_ms": ttft50, "ttft_p99_ms": ttft99, "e2e_p50_ms": 400.0, "e2e_p99_ms": 700.0,
            "output_tokens_per_s": tokens, "prefix_hit_ratio": hit, "busiest_over_mean": busiest,
            "mesh_cpu_cores": 1.0, "errors": {}, "requests": 10}


def test_scale_out_targets_are_ratios_against_one_service_of_the_same_run():
    results = {"scale_out": {
        "shared_prefix": {scale_label(1): run(20, 80, 0.94, 1.1), scale_label(2): run(21, 100, 0.93, 1.2),
                          scale_label(4): run(30, 90, 0.95, 1.1), "prefix, 4 services, own index each": run(90, 700, 0.6, 1.0)},
        "no_shared_prefix": {"least_request, 1 service": run(100, 400, 0.0, 1.0),
                             scale_label(4): run(104, 380, 0.0, 1.0, tokens=755.0)}}}
    out = targets(results)
    two, four = out["scale_out"]["2 services"], out["scale_out"]["4 services"]
    assert two["ttft_p50_over_1_service (<= 1.1)"] == 1.05 and two["ttft_p99_over_1_service (<= 1.3)"] == 1.25
    assert two["met"] is True
    assert four["ttft_p50_over_1_service (<= 1.1)"] == 1.5 and four["met"] is False
    assert "8 services" not in out["scale_out"]
    assert out["scale_out_no_shared_prefix"]["met (each within 5%; lower latency counts as within)"] is True
    assert scale_label(1) == "prefix, 1 service" and scale_label(4) == "prefix, 4 services, shared view"


def test_the_report_shows_every_row_the_views_cost_and_the_chaos_curve():
    routing = {
        "scale_out": {"shared_prefix": {scale_label(1): run(20, 80, 0.94, 1.1)}, "no_shared_prefix": {}},
        "view_cost_us": {"shared_prefix": {"publish_p50_us": 9.0, "publish_p99_us": 30.0, "apply_p50_us": 40.0,
                                           "apply_p99_us": 120.0}},
        "picker_cost_us": {"shared_prefix": {"prefix": {"p50_us": 60.0, "p99_us": 150.0}}},
        "chaos": {"events": [["bus SIGKILLed", 10.0]], "requests": 5, "errors": {}, "hit_ratio_before": 0.98,
                  "back_within_0.05_after_s": {"bus SIGKILLed": 0.0},
                  "curve": [{"second": 0, "requests": 5, "errors": 0, "hit_ratio": 0.98, "ttft_p50_ms": 20.0,
                             "ttft_p99_ms": 40.0}]},
    }
    text = "\n".join(_scale_out_rows(routing))
    assert "| shared prefix | prefix, 1 service | 20 / 80 ms |" in text
    assert "+9.0 / +30.0 µs p50 / p99" in text and "the picker's own: 60.0 / 150.0 µs" in text
    assert "bus SIGKILLed at 10.0 s" in text and "| 0 | 5 | 0 | 0.98 | 20.0 / 40.0 ms |" in text
    assert _scale_out_rows({}) == []


def test_the_chaos_curve_finds_when_the_hit_ratio_is_back():
    def outcome(at, cached):
        o = Outcome(Turn(at, None, "q", 16, 1), 0, sent=100.0 + at, first=100.0 + at + 0.02, done=100.0 + at + 0.3,
                    prompt_tokens=100, completion_tokens=16, cached_tokens=cached)
        return o

    outcomes = [outcome(t / 4, 95) for t in range(0, 40)]  # 0-10 s: 0.95
    outcomes += [outcome(10 + t / 4, 10) for t in range(0, 12)]  # 10-13 s: misses
    outcomes += [outcome(13 + t / 4, 96) for t in range(0, 28)]  # 13-20 s: back
    outcomes.append(Outcome(Turn(15.0, None, "q", 16, 1), 0, sent=115.0, error="UNAVAILABLE"))
    curve = chaos_curve(outcomes, 100.0, [("bus SIGKILLed", 10.0)], 20.0)
    assert curve["hit_ratio_before"] == 0.95
    assert curve["back_within_0.05_after_s"]["bus SIGKILLed"] == 3.0
    assert curve["errors"] == {"UNAVAILABLE": 1}
    assert curve["curve"][11]["hit_ratio"] == 0.1 and curve["curve"][15]["errors"] == 1
