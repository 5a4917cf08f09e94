"""A real OTLP/HTTP trace receiver for tests: decodes protobuf (the SDK) and JSON (Triton) exports."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


@dataclass
class Span:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    attributes: dict = field(default_factory=dict)


def _value(raw: dict):
    for kind in ("stringValue", "intValue", "doubleValue", "boolValue"):
        if kind in raw:
            return raw[kind]
    if "arrayValue" in raw:
        return [_value(v) for v in raw["arrayValue"].get("values", [])]
    return None


def _from_json(body: bytes) -> list[Span]:
    spans = []
    for resource_spans in json.loads(body).get("resourceSpans", []):
        attrs = {a["key"]: _value(a["value"]) for a in resource_spans.get("resource", {}).get("attributes", [])}
        for scope in resource_spans.get("scopeSpans", []):
            for s in scope.get("spans", []):
                spans.append(Span(
                    attrs.get("service.name", ""), s["traceId"].lower(), s["spanId"].lower(),
                    s.get("parentSpanId", "").lower(), s["name"],
                    {a["key"]: _value(a["value"]) for a in s.get("attributes", [])},
                ))
    return spans


def _any(value):
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_any(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _from_protobuf(body: bytes) -> list[Span]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        attrs = {a.key: _any(a.value) for a in resource_spans.resource.attributes}
        for scope in resource_spans.scope_spans:
            for s in scope.spans:
                spans.append(Span(
                    attrs.get("service.name", ""), s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name,
                    {a.key: _any(a.value) for a in s.attributes},
                ))
    return spans


class OtlpReceiver:
    """Collects every span POSTed to http://127.0.0.1:<port>/v1/traces."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.raw_bodies: list[bytes] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                content_type = self.headers.get("Content-Type", "")
                spans = _from_json(body) if "json" in content_type else _from_protobuf(body)
                with receiver._lock:
                    receiver.spans.extend(spans)
                    receiver.raw_bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Type", content_type or "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]
