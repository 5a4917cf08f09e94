"""hubmesh.common.v1.Mesh: what a modality service tells of itself and of its Triton replicas (the
state of its ReplicaSet, its own Prometheus counters). Every modality service serves it beside its
own servicer (services/common/server.py, run_modality_service); the façade's GET /v1/mesh asks each.

Read, never computed on a request's path: Describe reads the replica set's fields and this
process's metrics registry (services/common/metrics.py, services/common/fair_share.py), so it
answers in microseconds and never calls Triton."""

from __future__ import annotations

import os
import socket
import time
from collections import defaultdict, deque

import grpc
from prometheus_client import REGISTRY, CollectorRegistry

from hubmesh.common.v1 import mesh_pb2, mesh_pb2_grpc
from services.common.replicas import Replica, ReplicaSet

MAX_EVENTS = 50


def replica_state(replica: Replica) -> str:
    """ready, quarantined, ejected, not_ready or unprobed (mesh.proto's ReplicaState.state)."""
    if replica.quarantined:
        return "quarantined"
    if replica.ejected:
        return "ejected"
    if replica.ready_models is None:
        return "unprobed"
    return "ready" if replica.ready_models else "not_ready"


class Counters:
    """One read of a registry: sample name -> [(labels, value)]."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for family in registry.collect():
            if not family.name.startswith("hubmesh_"):
                continue
            for sample in family.samples:
                self.samples[sample.name].append((sample.labels, sample.value))

    def total(self, name: str, **match: str) -> float:
        return sum(value for labels, value in self.samples.get(name, ())
                   if all(labels.get(k) == v for k, v in match.items()))

    def by(self, name: str, label: str) -> list[mesh_pb2.LabelledCount]:
        sums: dict[str, float] = defaultdict(float)
        for labels, value in self.samples.get(name, ()):
            sums[labels.get(label, "")] += value
        return [mesh_pb2.LabelledCount(label=key, value=value) for key, value in sorted(sums.items())]


class MeshServicer(mesh_pb2_grpc.MeshServicer):
    """Describe for one service process: `service` is its modality, `replicas` its replica set."""

    def __init__(self, service: str, replicas: ReplicaSet, listen: str = "",
                 registry: CollectorRegistry = REGISTRY) -> None:
        self.service = service
        self.replicas = replicas
        self.registry = registry
        self.instance = f"{socket.gethostname()} pid {os.getpid()}" + (f" {listen}" if listen else "")
        self.started = time.monotonic()
        self.events: deque[mesh_pb2.ReplicaEvent] = deque(maxlen=MAX_EVENTS)
        replicas.listeners.append(self._on_event)

    def _on_event(self, replica: Replica, event: str) -> None:
        self.events.append(mesh_pb2.ReplicaEvent(at=time.time(), address=replica.address, event=event))

    def describe(self) -> mesh_pb2.MeshState:
        counters = Counters(self.registry)
        replicas = self.replicas.replicas
        return mesh_pb2.MeshState(
            service=self.service,
            instance=self.instance,
            uptime_s=time.monotonic() - self.started,
            models=list(self.replicas.models),
            replicas=[self._replica(r, counters) for r in replicas],
            in_flight=sum(r.in_flight for r in replicas),
            queued=int(counters.total("hubmesh_admission_waiting")),
            route_decisions=counters.by("hubmesh_route_decisions_total", "reason"),
            prompt_tokens=counters.total("hubmesh_tokens_total", direction="in"),
            cached_tokens=counters.total("hubmesh_prompt_cached_tokens_total"),
            migrations=counters.by("hubmesh_text_migrations_total", "outcome"),
            stalls=counters.by("hubmesh_text_stalls_total", "phase"),
            events=self._events(),
        )

    def _events(self) -> list[mesh_pb2.ReplicaEvent]:
        """The replica set's changes of state and what happened to generations there (its notes:
        migrations, stalls), in time, the latest MAX_EVENTS."""
        notes = [mesh_pb2.ReplicaEvent(at=at, address=address, event=event) for at, address, event in self.replicas.notes]
        return sorted([*self.events, *notes], key=lambda e: e.at)[-MAX_EVENTS:]

    @staticmethod
    def _replica(replica: Replica, counters: Counters) -> mesh_pb2.ReplicaState:
        running = waiting = 0.0
        for load in replica.load.values():
            running += load.running
            waiting += load.waiting
        address = replica.address
        return mesh_pb2.ReplicaState(
            address=address,
            state=replica_state(replica),
            ready_models=sorted(replica.ready_models or ()),
            in_flight=replica.in_flight,
            engine_running=running,
            engine_waiting=waiting,
            ejections=counters.total("hubmesh_replica_ejections_total", replica=address),
            stalls=counters.total("hubmesh_text_stalls_total", replica=address),
            canaries=counters.total("hubmesh_replica_canaries_total", replica=address),
            routed=counters.total("hubmesh_route_decisions_total", replica=address),
        )

    async def Describe(self, request: mesh_pb2.DescribeRequest, context: grpc.aio.ServicerContext) -> mesh_pb2.MeshState:
        return self.describe()


def add_mesh(server: grpc.aio.Server, service: str, replicas: ReplicaSet, listen: str = "") -> MeshServicer:
    """Registers Describe for this process's `replicas` on `server`."""
    servicer = MeshServicer(service, replicas, listen)
    mesh_pb2_grpc.add_MeshServicer_to_server(servicer, server)
    return servicer
