"""GET /v1/mesh: each modality service's view of its Triton replicas (ready, quarantined, ejected),
its calls in flight and queued, its routing decisions and hit ratio, migrations, stalls and the
replica set's latest events, from the services' own state and counters (hubmesh.common.v1.Mesh,
services/common/mesh.py). For the operator (the `admin` scope) and the console's Mesh page.

The services are asked at once, each within MESH_TIMEOUT_S: one that cannot be reached is listed as
`available: false` with why, never as a failure of the whole answer. A service with several
processes (text services scaled out) is listed once per process, each with its `address`."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from aiohttp import web

from facade.api.response_bodies import Mesh, MeshService
from facade.clients import CLIENTS, Clients
from facade.jsonio import json_response
from hubmesh.common.v1 import mesh_pb2

log = logging.getLogger(__name__)

MESH_TIMEOUT_S = 2.0


def _counts(items) -> dict[str, float]:
    return {item.label: item.value for item in items}


def service_view(name: str, state: mesh_pb2.MeshState) -> MeshService:
    """The JSON of one service's MeshState."""
    prompt, cached = state.prompt_tokens, state.cached_tokens
    return {
        "service": name,
        "available": True,
        "instance": state.instance,
        "uptime_s": round(state.uptime_s, 3),
        "models": list(state.models),
        "replicas": [{
            "address": r.address, "state": r.state,
            "ready_models": list(r.ready_models), "in_flight": r.in_flight,
            "engine_running": r.engine_running, "engine_waiting": r.engine_waiting, "ejections": r.ejections,
            "stalls": r.stalls, "canaries": r.canaries, "routed": r.routed,
        } for r in state.replicas],
        "in_flight": state.in_flight,
        "queued": state.queued,
        "routing": {"decisions": _counts(state.route_decisions), "prompt_tokens": prompt, "cached_tokens": cached,
                    "hit_ratio": round(cached / prompt, 4) if prompt > 0 else None},
        "migrations": _counts(state.migrations),
        "stalls": _counts(state.stalls),
        "events": [{"at": e.at, "address": e.address, "event": e.event} for e in state.events],
    }


async def describe(clients: Clients, name: str, stub, address: str | None = None) -> MeshService:
    """One service's view (the process at `address`, or the channel's next), or why it is unavailable."""
    try:
        state = await stub.Describe(mesh_pb2.DescribeRequest(), timeout=min(MESH_TIMEOUT_S, clients.timeout_s),
                                    metadata=clients.metadata)
    except grpc.aio.AioRpcError as err:
        log.warning("mesh: the %s service%s did not answer: %s %s", name, f" at {address}" if address else "",
                    err.code().name, err.details())
        view: MeshService = {"service": name, "available": False,
                             "error": f"{err.code().name}: {err.details() or 'the service did not answer'}"}
    else:
        view = service_view(name, state)
    if address:
        view["address"] = address
    return view


async def describe_each(clients: Clients, name: str) -> tuple[list[MeshService], set[str]]:
    """Each process of service `name`: every address behind its target asked on its own channel
    (facade/api/mesh/instances.py); one address: the façade's own channel. And the addresses used."""
    stub = clients.mesh.get(name)
    if stub is None:
        return [{"service": name, "available": False, "error": "no channel to this service"}], set()
    target = clients.targets.get(name)
    each = await clients.mesh_instances.stubs(target) if target else {}
    if len(each) <= 1:
        return [await describe(clients, name, stub)], set()
    views = await asyncio.gather(*(describe(clients, name, one, address) for address, one in each.items()))
    return list(views), set(each)


async def get_mesh(request: web.Request) -> web.Response:
    """Every modality service's view of its replicas, asked now: each process of a service with several."""
    clients = request.app[CLIENTS]
    answers = await asyncio.gather(*(describe_each(clients, name) for name in clients.mesh))
    await clients.mesh_instances.forget(set().union(*(used for _, used in answers)))
    services = [view for views, _ in answers for view in views]
    body: Mesh = {"object": "mesh", "services": services, "at": time.time()}
    return json_response(body)
