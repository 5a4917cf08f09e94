"""hubmesh.common.v1.Mesh (services/common/mesh.py) and GET /v1/mesh (facade/api/mesh): each
modality service's replicas as its ReplicaSet holds them, its own counters, the replica set's
events; the façade asks every service, lists one it cannot reach as unavailable (never a 500), needs
the admin scope and answers what /openapi.json documents.

Real gRPC servers in-process (the text servicer over a fake backend, and Mesh), replica sets whose
Tritons are never called: their states are set as the probes and the stall detector would."""

from __future__ import annotations

import asyncio
import time

import grpc
import jwt
import pytest

from facade.api.mesh.instances import addresses
from facade.app import create_app
from facade.clients import service_metadata
from facade.settings import Settings
from hubmesh.common.v1 import mesh_pb2, mesh_pb2_grpc
from hubmesh.text.v1 import text_generation_pb2 as text_pb2
from hubmesh.text.v1 import text_generation_pb2_grpc as text_grpc
from local.processes import free_ports
from services.common.interceptors import AdmissionInterceptor
from services.common.internal_auth import RequireSecret
from services.common.mesh import MAX_EVENTS, MeshServicer, replica_state
from services.common.metrics import CACHED_TOKENS, MIGRATIONS, ROUTE_DECISIONS, STALLS, count_tokens
from services.common.replicas import ReplicaSet, parse_targets
from services.text.servicer import TextGenerationServicer
from tests.fakes import FakeTextBackend, chunk
from tests.unit.openapi_check import Conformance
from tests.unit.text_service_fixture import CATALOG, serving

KEY = "mesh-key"
SECRET = "mesh-secret-mesh-secret-mesh-secret-mesh"
TRITON_MODEL = "mesh-test-model"


def bearer(scope: str) -> dict:
    now = int(time.time())
    token = jwt.encode({"sub": "ops", "scope": scope, "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


def replica_set() -> ReplicaSet:
    """Three replicas on ports nothing listens on: ready, ejected, quarantined (and one never probed)."""
    ports = free_ports(4)
    replicas = ReplicaSet(parse_targets(",".join(f"127.0.0.1:{p}" for p in ports)), models=[TRITON_MODEL])
    return replicas


def states(replicas: ReplicaSet) -> tuple[str, str, str, str]:
    ready, ejected, quarantined, unprobed = replicas.replicas
    ready.ready_models = frozenset({TRITON_MODEL})
    ejected.ready_models = frozenset({TRITON_MODEL})
    quarantined.ready_models = frozenset({TRITON_MODEL})
    replicas.eject(ejected, "a call failed UNAVAILABLE")
    replicas.quarantine(quarantined, "a generation stalled")
    return ready.address, ejected.address, quarantined.address, unprobed.address


async def test_describe_tells_each_replicas_state_and_the_services_counters():
    replicas = replica_set()
    mesh = MeshServicer("text", replicas, listen="127.0.0.1:50051")
    ready, ejected, quarantined, unprobed = states(replicas)
    ROUTE_DECISIONS.labels(TRITON_MODEL, ready, "prefix").inc(3)
    ROUTE_DECISIONS.labels(TRITON_MODEL, ready, "load").inc()
    STALLS.labels(quarantined, "first_token").inc()
    with replicas.replicas[0].busy(), replicas.replicas[0].busy():
        state = mesh.describe()
    assert state.service == "text" and "127.0.0.1:50051" in state.instance and state.uptime_s >= 0
    assert list(state.models) == [TRITON_MODEL]
    by_address = {r.address: r for r in state.replicas}
    assert {a: r.state for a, r in by_address.items()} == {
        ready: "ready", ejected: "ejected", quarantined: "quarantined", unprobed: "unprobed"}
    assert list(by_address[ready].ready_models) == [TRITON_MODEL] and by_address[ready].in_flight == 2
    assert state.in_flight == 2
    assert by_address[ready].routed == 4 and by_address[quarantined].stalls == 1
    assert by_address[ejected].ejections == 1
    assert [(e.address, e.event) for e in state.events] == [(ejected, "ejected"), (quarantined, "quarantined")]
    decisions = {c.label: c.value for c in state.route_decisions}
    assert decisions["prefix"] >= 3 and decisions["load"] >= 1  # the process's counters: other tests' too
    assert mesh.describe().replicas[0].in_flight == 0
    replicas.readmit(replicas.replicas[2])
    assert [e.event for e in mesh.describe().events][-1] == "admitted"


def test_replica_states():
    replicas = replica_set()
    first = replicas.replicas[0]
    assert replica_state(first) == "unprobed"
    first.ready_models = frozenset()
    assert replica_state(first) == "not_ready"
    first.ready_models = frozenset({TRITON_MODEL})
    assert replica_state(first) == "ready"


async def test_describe_over_grpc_with_the_internal_secret():
    replicas = replica_set()

    def register(server):
        mesh_pb2_grpc.add_MeshServicer_to_server(MeshServicer("embeddings", replicas), server)

    async with serving(register, interceptors=[RequireSecret("s3cret")]) as target, \
            grpc.aio.insecure_channel(target) as channel:
        stub = mesh_pb2_grpc.MeshStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Describe(mesh_pb2.DescribeRequest())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        state = await stub.Describe(mesh_pb2.DescribeRequest(), metadata=service_metadata("s3cret"))
    assert state.service == "embeddings" and len(state.replicas) == 4


@pytest.fixture
async def facade(aiohttp_client):
    """A façade whose text service (the real servicer, a fake backend) serves Mesh over `replicas`; the
    embeddings service's address has nothing listening, the images one a server without Mesh."""
    replicas = replica_set()
    mesh = MeshServicer("text", replicas, "text-listen")
    addresses = states(replicas)
    text = TextGenerationServicer(FakeTextBackend(), CATALOG)

    def register_text(server):
        text_grpc.add_TextGenerationServicer_to_server(text, server)
        mesh_pb2_grpc.add_MeshServicer_to_server(mesh, server)

    async with serving(register_text) as text_target, serving(lambda server: None) as images_target:
        unreachable = f"127.0.0.1:{free_ports(1)[0]}"
        app = create_app(Settings(api_keys=(KEY,), jwt_secret=SECRET, text_target=text_target,
                                  embeddings_target=unreachable, images_target=images_target))
        client = await aiohttp_client(app)
        client.addresses = addresses
        yield client


async def test_get_mesh_asks_every_service_and_lists_the_unreachable(facade):
    CACHED_TOKENS.labels("mesh-api-model").inc(30)
    count_tokens("mesh-api-model", 60, 0)
    MIGRATIONS.labels("mesh-api-model", "moved").inc()
    reply = await facade.get("/v1/mesh", headers={"Authorization": f"Bearer {KEY}"})
    assert reply.status == 200, await reply.text()
    mesh = await reply.json()
    assert mesh["object"] == "mesh" and abs(mesh["at"] - time.time()) < 60
    services = {s["service"]: s for s in mesh["services"]}
    assert list(services) == ["text", "embeddings", "images"]
    text = services["text"]
    assert text["available"] is True and text["instance"].endswith("text-listen")
    ready, ejected, quarantined, unprobed = facade.addresses
    assert [(r["address"], r["state"]) for r in text["replicas"]] == [
        (ready, "ready"), (ejected, "ejected"), (quarantined, "quarantined"), (unprobed, "unprobed")]
    assert text["in_flight"] == 0 and text["queued"] == 0
    routing = text["routing"]
    assert routing["cached_tokens"] >= 30 and routing["prompt_tokens"] >= 60
    assert routing["hit_ratio"] == round(routing["cached_tokens"] / routing["prompt_tokens"], 4)
    assert text["migrations"]["moved"] >= 1
    assert [e["event"] for e in text["events"]] == ["ejected", "quarantined"]
    for name in ("embeddings", "images"):  # nothing listening; a server without Mesh
        assert services[name]["available"] is False and services[name]["error"], services[name]
    assert services["images"]["error"].startswith("UNIMPLEMENTED")


async def test_get_mesh_needs_the_admin_scope_and_is_documented(facade):
    doc = Conformance(await (await facade.get("/openapi.json")).json())
    assert "/v1/mesh" in doc.document["paths"]
    for headers, status in (({}, 401), (bearer("chat models keys"), 403), (bearer("admin"), 200)):
        reply = await facade.get("/v1/mesh", headers=headers)
        assert reply.status == status, await reply.text()
        body = await doc.check(reply, "GET", "/v1/mesh")
        if status != 200:
            assert body["error"]["type"] in ("invalid_request_error", "permission_error", "authentication_error")
    reply = await facade.post("/v1/mesh", headers={"Authorization": f"Bearer {KEY}"})
    assert reply.status == 405 and "error" in await reply.json()


async def test_a_service_with_several_processes_is_listed_once_per_process(aiohttp_client):
    """Two text services behind one `ipv4:a,b` target (as make run's HUBMESH_TEXT_SERVICES=2): each is
    asked on its own channel, whatever the round robin would pick; one gone is listed as such."""
    def register(name: str):
        def register_text(server):
            text_grpc.add_TextGenerationServicer_to_server(TextGenerationServicer(FakeTextBackend(), CATALOG), server)
            mesh_pb2_grpc.add_MeshServicer_to_server(MeshServicer("text", replica_set(), name), server)
        return register_text

    async with serving(register("first")) as first, serving(register("second")) as second:
        gone = f"127.0.0.1:{free_ports(1)[0]}"
        app = create_app(Settings(api_keys=(KEY,), jwt_secret=SECRET, text_target=f"ipv4:{first},{second},{gone}"))
        client = await aiohttp_client(app)
        for _ in range(2):  # the channels per address are kept between calls
            reply = await client.get("/v1/mesh", headers={"Authorization": f"Bearer {KEY}"})
            assert reply.status == 200, await reply.text()
            text = {s["address"]: s for s in (await reply.json())["services"] if s["service"] == "text"}
            assert set(text) == {first, second, gone}
            assert text[first]["instance"].endswith("first") and text[second]["instance"].endswith("second")
            assert text[gone]["available"] is False and text[gone]["error"].startswith("UNAVAILABLE")


@pytest.mark.parametrize(("target", "expected"), [
    ("ipv4:127.0.0.1:2,127.0.0.1:1", ["127.0.0.1:1", "127.0.0.1:2"]),
    ("localhost:50051", ["127.0.0.1:50051"]),
    ("dns:///127.0.0.1:7", ["127.0.0.1:7"]),
    ("unix:/tmp/text.sock", ["unix:/tmp/text.sock"]),
    ("no-such-host.invalid:50051", ["no-such-host.invalid:50051"]),
])
async def test_the_addresses_behind_a_target(target, expected):
    found = await addresses(target)
    assert found == expected or (target == "localhost:50051" and "127.0.0.1:50051" in found), found


def test_migrations_and_stalls_are_listed_among_the_events_in_time():
    replicas = replica_set()
    mesh = MeshServicer("text", replicas)
    ready, ejected, quarantined, unprobed = states(replicas)
    by_address = {r.address: r for r in replicas.replicas}
    replicas.note(by_address[ejected], "migration (12 tokens moved elsewhere)")
    replicas.note(by_address[quarantined], "stall (first_token)")
    events = [(e.address, e.event) for e in mesh.describe().events]
    assert events[-2:] == [(ejected, "migration (12 tokens moved elsewhere)"), (quarantined, "stall (first_token)")]
    assert (ejected, "ejected") in events and len(events) <= MAX_EVENTS
    ats = [e.at for e in mesh.describe().events]
    assert ats == sorted(ats)


async def test_a_full_service_still_describes_itself():
    """Admission at its limit refuses a generation, never the operator's Describe."""
    backend = FakeTextBackend([chunk(["held"])], hang_after=0)  # holds its slot until cancelled
    text = TextGenerationServicer(backend, CATALOG)
    mesh = MeshServicer("text", replica_set())

    def register(server):
        text_grpc.add_TextGenerationServicer_to_server(text, server)
        mesh_pb2_grpc.add_MeshServicer_to_server(mesh, server)

    request = text_pb2.GenerateRequest(model=next(iter(CATALOG)), prompt="hold")
    async with serving(register, interceptors=[AdmissionInterceptor(1, policy="first_come")]) as target, \
            grpc.aio.insecure_channel(target) as channel:
        stub = text_grpc.TextGenerationStub(channel)
        held = stub.GenerateStream(request)
        held_task = asyncio.ensure_future(held.read())
        await asyncio.wait_for(_until(lambda: len(backend.calls) == 1), 10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.GenerateStream(request):
                pass
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        state = await mesh_pb2_grpc.MeshStub(channel).Describe(mesh_pb2.DescribeRequest(), timeout=5)
        assert state.service == "text"
        held.cancel()
        held_task.cancel()


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)
