"""End to end: one trace across façade → service → Triton; metrics, request ids and JSON logs."""

import json
import os
import re
import urllib.request

import httpx
import pytest

from tests.e2e.conftest import KEY, wait_for

pytestmark = pytest.mark.e2e
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SECRET_PROMPT = "zebra-quartz-prompt-marker"


def test_one_request_is_one_trace_across_every_hop(stack, otlp):
    trace_id, caller_span = os.urandom(16).hex(), os.urandom(8).hex()
    response = httpx.post(
        f"{stack.config.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {KEY}", "traceparent": f"00-{trace_id}-{caller_span}-01"},
        json={"model": MODEL, "messages": [{"role": "user", "content": SECRET_PROMPT}], "max_tokens": 3,
              "user": "Zoë Müller <zoë@example.com> 🦜"},
        timeout=120,
    )
    assert response.status_code == 200

    def complete():
        spans = otlp.trace(trace_id)
        ids = {s.span_id for s in spans}
        linked = all(s.parent_id in ids or s.parent_id == caller_span for s in spans)
        services = {s.service for s in spans}
        return linked and {"hubmesh-facade", "hubmesh-text", "triton-text"} <= services and "compute" in {
            s.name for s in spans}

    # processes export in batches: wait until every span's parent has arrived too
    wait_for(complete, 60, "spans from the façade, the text service and Triton, all linked")
    spans = otlp.trace(trace_id)
    by_id = {s.span_id: s for s in spans}
    # the incoming traceparent was continued, and every span hangs off the one trace
    roots = [s for s in spans if s.parent_id not in by_id]
    assert [s.parent_id for s in roots] == [caller_span], [(s.service, s.name, s.parent_id) for s in roots]
    assert roots[0].service == "hubmesh-facade"

    def chain(span):
        names = []
        while span is not None:
            names.append(span.service)
            span = by_id.get(span.parent_id)
        return names

    compute = next(s for s in spans if s.name == "compute")
    path = chain(compute)
    assert path[0] == "triton-text" and path[-1] == "hubmesh-facade" and "hubmesh-text" in path
    server = next(s for s in spans if s.service == "hubmesh-text" and s.name.endswith("/Generate"))
    assert server.attributes["gen_ai.operation.name"] == "chat"
    assert server.attributes["gen_ai.request.model"] == MODEL
    assert server.attributes["gen_ai.usage.output_tokens"] == 3
    assert server.attributes["gen_ai.usage.input_tokens"] > 0
    # who the call was for reached the service in the request message, any Unicode included
    assert server.attributes["enduser.id"] == "Zoë Müller <zoë@example.com> 🦜"
    assert server.attributes["hubmesh.subject"].startswith("key:")
    # the Triton replica that generated it, and why the picker chose it
    assert server.attributes["hubmesh.replica"] == f"127.0.0.1:{stack.config.ports['text']['triton_grpc']}"
    assert server.attributes["hubmesh.route.reason"] in ("prefix", "load")
    facade = roots[0]
    assert facade.attributes["gen_ai.request.model"] == MODEL
    # no prompt text and no credential anywhere in what was exported
    raw = b"".join(otlp.raw_bodies)
    assert SECRET_PROMPT.encode() not in raw and KEY.encode() not in raw


def test_a_streamed_request_is_one_trace_too(stack, otlp):
    """Streams ride on a long-lived GenerateMany call (facade/text_streams.py): each still gets its own
    client and server GenerateStream span, linked into the request's trace; the carrying call none."""
    trace_id, caller_span = os.urandom(16).hex(), os.urandom(8).hex()
    with httpx.stream(
        "POST", f"{stack.config.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {KEY}", "traceparent": f"00-{trace_id}-{caller_span}-01"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True},
        timeout=120,
    ) as response:
        assert response.status_code == 200
        assert response.read().endswith(b"data: [DONE]\n\n")

    def complete():
        spans = otlp.trace(trace_id)
        ids = {s.span_id for s in spans}
        return (all(s.parent_id in ids or s.parent_id == caller_span for s in spans)
                and {"hubmesh-facade", "hubmesh-text", "triton-text"} <= {s.service for s in spans})

    wait_for(complete, 60, "spans of the streamed request from every hop, all linked")
    spans = otlp.trace(trace_id)
    by_id = {s.span_id: s for s in spans}
    server = next(s for s in spans if s.service == "hubmesh-text" and s.name.endswith("/GenerateStream"))
    client_span = by_id[server.parent_id]
    assert client_span.service == "hubmesh-facade" and client_span.name.endswith("GenerateStream")
    assert server.attributes["gen_ai.usage.output_tokens"] == 3
    assert server.attributes["hubmesh.subject"].startswith("key:")
    assert any(s.service == "triton-text" and by_id.get(s.parent_id, s).service == "hubmesh-text" for s in spans)
    assert not any("GenerateMany" in s.name for s in otlp.spans if s.service in ("hubmesh-facade", "hubmesh-text"))


def test_prometheus_metrics_on_facade_and_services(stack, client):
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                   stream=True).response.read()
    facade = httpx.get(f"http://127.0.0.1:{stack.config.http_port}/metrics").text
    assert re.search(r'hubmesh_requests_total\{endpoint="/v1/chat/completions",model="%s",status="200"\}' % MODEL,
                     facade)
    assert "hubmesh_time_to_first_token_seconds_bucket" in facade and "hubmesh_requests_in_flight" in facade
    text = urllib.request.urlopen(f"http://127.0.0.1:{stack.config.ports['text']['metrics']}/metrics").read().decode()
    assert re.search(r'hubmesh_tokens_total\{direction="out",model="%s"\} [1-9]' % MODEL, text)
    assert 'hubmesh_requests_total{endpoint="GenerateStream"' in text
    assert "hubmesh_inter_token_latency_seconds_bucket" in text
    triton_address = f"127.0.0.1:{stack.config.ports['text']['triton_grpc']}"
    assert re.search(r'hubmesh_route_decisions_total\{model="smollm2",reason="\w+",replica="%s"\} [1-9]'
                     % triton_address, text)
    assert f'hubmesh_replica_ready{{model="smollm2",replica="{triton_address}"}} 1.0' in text
    triton = urllib.request.urlopen(f"http://127.0.0.1:{stack.config.ports['text']['triton_metrics']}/metrics").read()
    assert b"nv_inference_request_success" in triton  # Triton's own metrics stay available


def test_request_ids_and_json_access_logs(stack):
    headers = {"Authorization": f"Bearer {KEY}", "X-Request-ID": "my-request-42"}
    response = httpx.get(f"{stack.config.base_url}/models", headers=headers)
    assert response.headers["x-request-id"] == "my-request-42"
    generated = httpx.get(f"{stack.config.base_url}/models", headers={"Authorization": f"Bearer {KEY}"})
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    assert httpx.get(f"http://127.0.0.1:{stack.config.http_port}/ready").status_code == 200

    def logged():
        for line in (stack.logs / "facade.log").read_text().splitlines():
            if line.startswith("{") and '"my-request-42"' in line:
                return json.loads(line)
        return None

    entry = wait_for(logged, 10, "the access log line")
    assert entry["endpoint"] == "/v1/models" and entry["status"] == 200 and entry["subject"].startswith("key:")
    assert {"latency_ms", "trace_id", "model", "prompt_tokens", "completion_tokens"} <= set(entry)
    assert KEY not in (stack.logs / "facade.log").read_text()
