"""gRPC options shared by every channel and server in the mesh (façade → services, services → Triton)."""

from __future__ import annotations

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_COMMON = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # a restarted peer is found again quickly
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]

# Façade -> services: a keepalive ping every 5 s, idle or not, unanswered for 5 s, closes the
# connection: a service replica that froze or was cut off is given up within 10 s, and the façade
# resumes its generation streams through another (facade/resumable.py). Our servers accept
# any number of such pings (SERVER_OPTIONS: no ping strikes). gRPC sends no keepalive ping while
# another ping (its flow-control probe) awaits its answer, and gives that one up only after
# `grpc.http2.ping_timeout_ms`, 60 s by default: measured with a SIGSTOPped server, 60-65 s to
# notice without it, 10 s with it.
CHANNEL_OPTIONS = [
    *_COMMON,
    # with a dns:/// target of a headless Kubernetes Service, calls spread over every service replica
    # (one HTTP/2 connection would otherwise pin them all to one pod)
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.keepalive_time_ms", 5_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

# Services -> Triton: one channel per replica (services.common.replicas picks among them), so no
# load-balancing policy here. A peer that is cut off (a partition) or frozen keeps its TCP connection
# open and sends nothing: a keepalive ping every 2 s during calls, unanswered for 2 s, closes the
# connection (its calls fail UNAVAILABLE and move; the replica is ejected), within the stall
# guard's own bound (services.text.stalls). A connection attempt gives up after 1 s (not gRPC's 20 s),
# so a replica whose link comes back is reached again within about the reconnect backoff (≤ 2 s).
# Our Tritons (local/triton.py, k8s/) accept a ping a second without data
# (--grpc-http2-min-recv-ping-interval-without-data=1000). A Triton left at its defaults answers more
# than 2 pings in 5 minutes with GOAWAY "too_many_pings" —
# but only pings that come while it has sent nothing since the last one: its readiness probes
# (services.common.replicas, every TRITON_PROBE_INTERVAL_S) and the tokens of the calls in flight
# answer between two pings, and at most 2 pings go out without data from this side
# (max_pings_without_data, the default), so an idle prefill longer than that draws no strike.
TRITON_CHANNEL_OPTIONS = [
    *_COMMON,
    ("grpc.keepalive_time_ms", 2_000),
    ("grpc.keepalive_timeout_ms", 2_000),
    ("grpc.http2.ping_timeout_ms", 2_000),  # as for CHANNEL_OPTIONS: else 60 s behind an unanswered probe
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.min_reconnect_backoff_ms", 1_000),
]

# Our gRPC servers: accept the façade's keepalive pings, and end connections after 5 minutes (with a
# long grace for streams) so clients re-resolve DNS and spread over replicas added since.
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 4_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_connection_age_ms", 300_000),
    ("grpc.max_connection_age_grace_ms", 660_000),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
