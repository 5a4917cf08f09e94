"""Settings of the text service (HUBMESH_TEXT_*), parsed once at its entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt
from pydantic_settings import SettingsConfigDict

from services.common.settings import Seconds, ServiceSettings

DEFAULT_CATALOG = Path(__file__).with_name("catalog.toml")


class Settings(ServiceSettings):
    """HUBMESH_TEXT_LISTEN, _TRITON_URL, _CATALOG, _TRITON_TIMEOUT_S, the replica settings of every
    service (_TRITON_METRICS_PORT, _TRITON_PROBE_INTERVAL_S, _TRITON_RESOLVE_INTERVAL_S) and the
    routing ones (_ROUTING, _ROUTING_*, the shared view's _ROUTING_BUS_*), and the stall ones (_STALL_*)."""

    model_config = SettingsConfigDict(env_prefix="HUBMESH_TEXT_")

    listen: str = "127.0.0.1:50051"
    triton_url: str = "127.0.0.1:8001"
    catalog: Path = DEFAULT_CATALOG
    # Longest a single generation may run inside Triton before the service gives up on it.
    triton_timeout_s: Seconds = 600.0
    # which replica generates each request: round_robin, least_request, or prefix (prefix affinity
    # weighed against load; services.text.prefix_picker) — the default is the one `make bench` shows best
    routing: Literal["round_robin", "least_request", "prefix"] = "prefix"
    # prefix: weight of the prompt blocks a replica would have to prefill (this request's and those
    # queued there), and of the context blocks it is decoding (services.text.prefix_picker)
    routing_prefix_weight: float = Field(1.0, ge=0)
    routing_load_weight: float = Field(0.1, ge=0)
    # prefix: how much (a share of the prompt's blocks) the replica a prompt nobody has seen hashes to is
    # preferred, so that several text-service replicas place a new prefix on the same Triton; 0: off
    routing_affinity: float = Field(0.5, ge=0)
    # prefix: characters per block of the prefix index (~4 characters a token), and blocks it keeps per
    # replica until the replica reports its KV capacity
    routing_block_chars: PositiveInt = 256
    routing_index_blocks: PositiveInt = 8192
    # prefix: the shared routing view of every text-service replica (services.text.prefix_view): a NATS
    # URL (nats://host:4222, comma-separated for a cluster); empty: each replica routes on its own index
    routing_bus_url: str = ""
    # its subjects (<subject>.placed, <subject>.load) and JetStream stream: one pair per deployment
    # sharing a NATS; how often each replica publishes its calls in flight, and how long placements
    # are kept for a replica that starts to replay
    routing_bus_subject: str = Field("hubmesh.route", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    routing_bus_stream: str = Field("HUBMESH_ROUTE", pattern=r"^[A-Za-z0-9_-]+$")
    routing_bus_heartbeat_s: Seconds = 1.0
    routing_bus_replay_s: Seconds = 300.0
    # how many times one generation may move to another replica when its replica goes away (0: never)
    max_migrations: int = Field(3, ge=0)
    # how often each replica's engine load is read from its metrics port
    triton_scrape_interval_s: Seconds = 0.5
    # GenerateMany (the façade's streams): least time between two writes of one call, so that under
    # load more tokens share a message (less CPU per token, up to this much more inter-token
    # latency); 0: every write as soon as there is something to send
    stream_flush_ms: float = Field(0.0, ge=0, le=50)
    # a generation whose replica sends nothing for k × what the replica's own pace leads to expect
    # (recent inter-token gaps; before the first token, the cost model's prefill and queue ahead), and
    # at least the floor, is stalled: moved elsewhere, and the replica quarantined (services.text.stalls);
    # k = 0: off. Until a replica's pace is measured, its deadline is STALL_COLD_S (a cold CPU model's
    # first prefill on two busy cores can take tens of seconds).
    stall_k: float = Field(16.0, ge=0)
    stall_floor_s: Seconds = 2.0
    stall_cold_s: Seconds = 120.0
    # a quarantined replica is admitted again after a canary generation of this many tokens succeeds
    # within this long, or k × what its measured pace leads to expect of it when that is longer
    # (tried every TRITON_PROBE_INTERVAL_S)
    stall_canary_tokens: PositiveInt = 4
    stall_canary_timeout_s: Seconds = 2.0

    def replica_options(self) -> dict:
        # the prefix picker weighs the engines' own queues: read them
        return {**super().replica_options(), "scrape_interval_s": self.triton_scrape_interval_s,
                "scrape": self.routing == "prefix"}

    def stall_options(self) -> dict:
        """Keyword arguments of TritonTextBackend for stalls."""
        from services.text.stalls import StallPolicy

        return {"stall_policy": StallPolicy(k=self.stall_k, floor_s=self.stall_floor_s, cold_s=self.stall_cold_s),
                "canary_tokens": self.stall_canary_tokens, "canary_timeout_s": self.stall_canary_timeout_s}

    def picker_options(self) -> dict:
        """Keyword arguments of services.text.prefix_picker.make_picker."""
        if self.routing != "prefix":
            return {}
        return {"prefix_weight": self.routing_prefix_weight, "load_weight": self.routing_load_weight,
                "affinity": self.routing_affinity,
                "block_chars": self.routing_block_chars, "index_blocks": self.routing_index_blocks}

    def prefix_view(self):
        """The shared routing view (services.text.prefix_view.PrefixView) for the prefix picker; None
        for other strategies. Its URL may be empty: the view then stays local (and says so)."""
        if self.routing != "prefix":
            return None
        from services.text.prefix_view import PrefixView

        return PrefixView(self.routing_bus_url, subject=self.routing_bus_subject, stream=self.routing_bus_stream,
                          heartbeat_s=self.routing_bus_heartbeat_s, expiry_s=3.5 * self.routing_bus_heartbeat_s,
                          replay_s=self.routing_bus_replay_s)
