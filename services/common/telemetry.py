"""OpenTelemetry tracing for every process, configured only by the standard OTEL_* variables.

Nothing is exported unless OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set.
OTEL_EXPORTER_OTLP_PROTOCOL picks http/protobuf (default) or grpc; OTEL_TRACES_SAMPLER and
OTEL_BSP_* are read by the SDK itself. Spans carry no prompt text and no credentials: query strings
(which hold signed-link signatures) are cut from URL attributes before export.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import grpc
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.propagators.textmap import Setter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

URL_ATTRIBUTES = ("url.full", "http.url", "http.target", "url.query")


class _DropQueryStrings(SpanProcessor):
    def on_start(self, span, parent_context=None) -> None:
        for key in URL_ATTRIBUTES:
            value = (span.attributes or {}).get(key)
            if isinstance(value, str) and "?" in value:
                span.set_attribute(key, value.split("?", 1)[0])
            elif key == "url.query" and value:
                span.set_attribute(key, "")


def configure_tracing(default_service_name: str, env: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """Installs a tracer provider exporting over OTLP, or nothing when no endpoint is configured."""
    if not (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return None
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    exporter: type[SpanExporter]
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
        exporter = GrpcSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
        exporter = HttpSpanExporter
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or default_service_name})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(_DropQueryStrings())
    provider.add_span_processor(BatchSpanProcessor(exporter()))
    trace.set_tracer_provider(provider)
    return provider


def tracing_enabled() -> bool:
    """Whether this process exports spans. When it does not, no instrumentation is installed at all:
    OpenTelemetry's no-op spans still cost a few hundred microseconds a request on these paths."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def instrument_grpc_clients() -> None:
    """Traces every grpc.aio channel created from now on (the services' channels to Triton included) and sends W3C
    `traceparent` in its metadata, which Triton continues.

    Unary calls are left out: OpenTelemetry's aio unary interceptor awaits the whole call inside the
    interceptor, so cancelling the caller no longer cancels the RPC (a client that goes away would
    leave Triton working). Streams (the text path to Triton) are traced end to end."""
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, filters

    GrpcAioInstrumentorClient(filter_=filters.negate(filters.any_of(
        filters.method_name("ModelInfer"), filters.method_name("ModelReady"),
    ))).instrument()


class TracingUnaryInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Client span and `traceparent` for unary calls that, unlike OpenTelemetry's own aio interceptor,
    hands the call back at once: cancelling the caller still cancels the RPC."""

    async def intercept_unary_unary(self, continuation, details, request):
        tracer = trace.get_tracer(__name__)
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        span = tracer.start_span(method.lstrip("/"), kind=trace.SpanKind.CLIENT,
                                 attributes={"rpc.system": "grpc", "rpc.method": method.rsplit("/", 1)[-1]})
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        inject(metadata, context=trace.set_span_in_context(span), setter=_MetadataSetter())
        details = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        try:
            call = await continuation(details, request)
        except BaseException:
            span.end()
            raise
        call.add_done_callback(lambda _: span.end())
        return call


class _MetadataSetter(Setter[grpc.aio.Metadata]):
    def set(self, carrier: grpc.aio.Metadata, key: str, value: str) -> None:
        carrier[key] = value


# Multiplexing calls (GenerateMany) live for minutes and carry many calls: each carried call gets a
# span of its own (services.text.multiplex on the server, facade.text_streams on the client), the
# carrying call none.
MULTIPLEXING_METHODS = ("GenerateMany",)


def _not_multiplexing():
    from opentelemetry.instrumentation.grpc import filters

    return filters.negate(filters.any_of(*(filters.method_name(m) for m in MULTIPLEXING_METHODS)))


def client_interceptors() -> list:
    """Tracing for the façade's channels: OpenTelemetry's stream interceptors, our unary one."""
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    kept = [i for i in aio_client_interceptors(filter_=_not_multiplexing())
            if not isinstance(i, grpc.aio.UnaryUnaryClientInterceptor)]
    return [TracingUnaryInterceptor(), *kept]


def server_interceptors() -> list:
    """The OpenTelemetry grpc.aio server interceptor (a no-op when tracing is not configured)."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(filter_=_not_multiplexing())]


def set_genai_attributes(**attributes) -> None:
    """GenAI semantic-convention attributes on the current span; None values are skipped."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({f"gen_ai.{k.replace('__', '.')}": v for k, v in attributes.items() if v is not None})
