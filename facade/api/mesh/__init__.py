"""GET /v1/mesh: every modality service's Triton replicas and counters, asked over gRPC (handler.py)."""
