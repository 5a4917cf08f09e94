"""`make run`: start the whole stack on 127.0.0.1, print how to call it, keep it running (a Triton or a
service that exits is started again: local/supervisor.py), stop it all on Ctrl-C/SIGTERM."""

import logging
import os
import signal
import threading
import time
from pathlib import Path

from facade.settings import generate_api_key
from local.stack import MODALITIES, ROOT, LocalStack, StackConfig, describe
from local.supervisor import StackFailed, Supervisor

log = logging.getLogger("hubmesh")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    env = os.environ
    run_dir = Path(env.get("HUBMESH_RUN_DIR") or ROOT / "run")  # logs, the SQLite file, images
    config = StackConfig(api_key=env.get("HUBMESH_API_KEY") or generate_api_key(), run_dir=run_dir.resolve())
    config.jwt_secret = env.get("HUBMESH_JWT_SECRET") or config.jwt_secret
    config.http_port = int(env.get("HUBMESH_HTTP_PORT", config.http_port))
    for modality in MODALITIES:  # HUBMESH_TEXT_PORT=50051, HUBMESH_TEXT_TRITON_PORTS=8000,8001,8002, ...
        ports = config.ports[modality.name]
        ports["service"] = int(env.get(f"HUBMESH_{modality.env_prefix}_PORT", ports["service"]))
        ports["metrics"] = int(env.get(f"HUBMESH_{modality.env_prefix}_METRICS_PORT", ports["metrics"]))
        triton = env.get(f"HUBMESH_{modality.env_prefix}_TRITON_PORTS")  # replica 0's
        if triton:
            ports["triton_http"], ports["triton_grpc"], ports["triton_metrics"] = (int(p) for p in triton.split(","))
        # HUBMESH_TEXT_REPLICAS=3: three Tritons for text; replica i listens on replica 0's ports + 100 × i
        replicas = env.get(f"HUBMESH_{modality.env_prefix}_REPLICAS", "1")
        try:
            config.replicas[modality.name] = int(replicas)
            if config.replicas[modality.name] < 1:
                raise ValueError
        except ValueError:
            log.error("HUBMESH_%s_REPLICAS must be a whole number >= 1, not %r", modality.env_prefix, replicas)
            return 2
    # HUBMESH_TEXT_SERVICES=4: four text services (the first on HUBMESH_TEXT_PORT, the others + 100 × i),
    # whose prefix pickers share one routing view over NATS (local/nats.py says which bus, and logs it)
    services = env.get("HUBMESH_TEXT_SERVICES", "1")
    try:
        config.text_services = int(services)
        if config.text_services < 1:
            raise ValueError
    except ValueError:
        log.error("HUBMESH_TEXT_SERVICES must be a whole number >= 1, not %r", services)
        return 2
    stop = threading.Event()
    supervisor: Supervisor | None = None

    def on_signal(*_) -> None:
        first = not stop.is_set()
        stop.set()
        if supervisor is None and first:  # still starting: stop waiting for it (once: not the clean-up)
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    stack = LocalStack(config)
    started = time.monotonic()
    tritons = sum(config.replica_count(m.name) for m in MODALITIES)
    log.info("starting %d Tritons, the services and the façade (launcher pid %d, logs in %s)", tritons, os.getpid(),
             config.run_dir / "logs")
    try:
        stack.start()
        log.info("ready in %.1f s", time.monotonic() - started)
        print(describe(config), flush=True)
        supervisor = Supervisor(stack.units())
        log.info("processes: %s", supervisor.pids())
        while not stop.wait(0.5):
            supervisor.tick()
        return 0
    except StackFailed as failure:
        log.error("%s", failure)
        return 1
    except KeyboardInterrupt:
        log.info("interrupted while starting")
        return 130
    finally:
        log.info("stopping")
        stack.stop()
        log.info("stopped")


if __name__ == "__main__":
    raise SystemExit(main())
