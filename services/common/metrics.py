"""Prometheus metrics shared by the façade and the services (each process has its own registry)."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("hubmesh_requests", "Requests by endpoint, model and status", ["endpoint", "model", "status"])
LATENCY = Histogram(
    "hubmesh_request_duration_seconds", "Request latency", ["endpoint", "model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
TTFT = Histogram(
    "hubmesh_time_to_first_token_seconds", "Time to first token of streams", ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ITL = Histogram(
    "hubmesh_inter_token_latency_seconds", "Time between stream chunks", ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
TOKENS = Counter("hubmesh_tokens", "Tokens in (prompt) and out (completion)", ["model", "direction"])
IN_FLIGHT = Gauge("hubmesh_requests_in_flight", "Requests being served", ["endpoint"])


class StreamTimer:
    """Time to first token and inter-token latency of one stream."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = time.perf_counter()
        self.last: float | None = None
        self._itl = ITL.labels(model)  # looked up once: chunks come thousands a second

    def chunk(self) -> None:
        now = time.perf_counter()
        if self.last is None:
            TTFT.labels(self.model).observe(now - self.started)
        else:
            self._itl.observe(now - self.last)
        self.last = now


def count_tokens(model: str, prompt: int, completion: int) -> None:
    if prompt:
        TOKENS.labels(model, "in").inc(prompt)
    if completion:
        TOKENS.labels(model, "out").inc(completion)

# Replicas and routing (services -> Triton replicas)
ROUTE_DECISIONS = Counter(
    "hubmesh_route_decisions", "Triton replica picked per call, and why", ["model", "replica", "reason"]
)
REPLICA_IN_FLIGHT = Gauge("hubmesh_replica_in_flight", "Calls of this process running on a Triton replica", ["replica"])
REPLICA_READY = Gauge("hubmesh_replica_ready", "1 while a model is ready on a Triton replica", ["replica", "model"])
EJECTIONS = Counter("hubmesh_replica_ejections", "Triton replicas ejected after a failed call", ["replica"])
PREFIX_MATCH = Histogram(
    "hubmesh_route_prefix_match_ratio", "Share of the prompt the picker expected cached on the replica it picked",
    ["model"], buckets=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0),
)
CACHED_TOKENS = Counter(
    "hubmesh_prompt_cached_tokens", "Prompt tokens the replicas served from their prefix cache", ["model"]
)
MIGRATIONS = Counter(
    "hubmesh_text_migrations", "Generations moved to another Triton replica when theirs went away, by outcome",
    ["model", "outcome"],
)
MIGRATION_SECONDS = Histogram(
    "hubmesh_text_migration_seconds", "From losing a generation's replica to the next replica's first response",
    ["model"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
STALLS = Counter(
    "hubmesh_text_stalls", "Generations whose Triton replica went silent past their stall deadline (services.text.stalls)",
    ["replica", "phase"],
)
STALL_DEADLINE = Histogram(
    "hubmesh_text_stall_deadline_seconds",
    "Stall deadlines the text service computed: each generation's first-token deadline when it was sent, and the "
    "inter-token deadline it ran under from its first token", ["phase"],
    buckets=(0.5, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120),
)
REPLICA_QUARANTINED = Gauge(
    "hubmesh_replica_quarantined", "1 while a Triton replica is quarantined after a stall (until a canary succeeds)",
    ["replica"],
)
CANARIES = Counter(
    "hubmesh_replica_canaries", "Canary generations sent to quarantined Triton replicas, by outcome", ["replica", "outcome"],
)
