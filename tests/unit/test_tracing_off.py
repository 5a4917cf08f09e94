"""Without an OTLP endpoint nothing is exported and nothing is instrumented: no OpenTelemetry middleware
in the façade, no interceptors on its channels, and the internal secret still travels on every call."""

from facade.capacity import capacity_middleware
from facade.app import create_app
from facade.clients import CLIENTS
from facade.errors import error_middleware
from facade.limits.middleware import limits_middleware
from facade.observability import access_middleware
from facade.settings import Settings
from services.common.telemetry import tracing_enabled


async def test_no_instrumentation_when_tracing_is_off(aiohttp_client):
    assert not tracing_enabled()  # no OTEL_EXPORTER_OTLP_ENDPOINT in the unit tests
    app = create_app(Settings(api_keys=("k",), internal_secret="s3cret"))
    client = await aiohttp_client(app)
    assert (await client.get("/health")).status == 200
    assert list(app.middlewares)[:3] == [access_middleware, error_middleware, capacity_middleware]
    assert list(app.middlewares)[4] is limits_middleware
    assert len(app.middlewares) == 5  # ... auth and limits: no OpenTelemetry middleware in front
    clients = app[CLIENTS]
    for method in (clients.text.Generate, clients.text.GenerateStream, clients.embeddings.Embed):
        assert not method._interceptors  # grpc.aio's multicallables keep their channel's interceptors here
    assert ("hubmesh-internal-secret", "s3cret") in clients.metadata
