"""`make run`'s launcher and the local stack the end-to-end tests and benchmarks start."""

import os

# gRPC's fork handlers can deadlock a fork() made while its threads are busy (seen: the launcher hung
# in fork() starting a child). The launchers only fork to exec a child at once, which needs none of them.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from services.common import grpc_runtime

grpc_runtime.apply()  # the load generators' gRPC runs as the mesh's (and the children inherit it)
