"""How gRPC runs in every process of the mesh, set before gRPC starts: services/__init__.py and
facade/__init__.py apply it on import, ahead of any module that imports grpc.

GRPC_EXPERIMENTS turns off gRPC's EventEngine client and listener (on by default in the grpcio this
project pins). With them, a channel's or server's socket reads and writes run on EventEngine's own
threads, which hand each completion on to the queue grpc.aio's poller thread drains: two thread
hand-offs per message. Without them the poller thread does the I/O itself. Measured with
`python -m bench.token_rate --runs 64x4 --echo 64`, alternating, two pairs on the 2-core machine:
64 simulator streams 425 / 465 -> 331 / 354 µs of mesh CPU per token, echo x64 271 / 285 -> 200 / 228
(EventEngine's threads took 43 of the façade's and 66 of the text service's µs per simulator token).
An operator's own GRPC_EXPERIMENTS, even an empty one, is left as it is.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

EXPERIMENTS = "-event_engine_client,-event_engine_listener"


def apply(env: MutableMapping[str, str] = os.environ) -> None:
    env.setdefault("GRPC_EXPERIMENTS", EXPERIMENTS)
