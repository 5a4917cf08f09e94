"""A private nats-server (with JetStream) for `make run`, the tests and `make bench`: the text services'
shared routing view (services/text/prefix_view.py). On a free (or given) port of 127.0.0.1, JetStream's
store in a directory of the run, stopped by its PID (process group). `NatsServer.kill()` and `.start()`
again on the same port are how the tests and the bench play a lost bus and its return.

Which bus a stack uses (`choose_bus`): HUBMESH_TEXT_ROUTING_BUS_URL when set (an operator's NATS, or
empty for none); else a private nats-server when the binary is there (Debian's `nats-server` package:
`make run`/`make test` install it where missing); else the machine's NATS on 127.0.0.1:4222 when one
answers there (under a subject and stream of this stack's own); else none: local prefix routing, logged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from local import processes

log = logging.getLogger("hubmesh")

SHARED_PORT = 4222


def nats_binary() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server")
         if os.access(p, os.X_OK)), None)


def server_info(port: int, timeout_s: float = 0.5) -> dict | None:
    """The INFO a NATS server on 127.0.0.1:`port` greets with (None when nothing NATS answers)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as conn:
            conn.settimeout(timeout_s)
            line = b""
            while not line.endswith(b"\r\n") and len(line) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                line += chunk
    except OSError:
        return None
    if not line.startswith(b"INFO "):
        return None
    try:
        return json.loads(line[5:].strip())
    except ValueError:
        return None


class NatsServer:
    def __init__(self, run_dir: Path, port: int | None = None, name: str = "nats") -> None:
        self.port = port or processes.free_port()
        self.log_path = run_dir / "logs" / f"{name}.log"
        self.store_dir = run_dir / name
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def is_ready(self) -> bool:
        info = server_info(self.port)
        return bool(info and info.get("jetstream"))

    def start(self, timeout_s: float = 20.0) -> NatsServer:
        binary = nats_binary()
        if binary is None:
            raise RuntimeError("nats-server is not installed (Debian: apt-get install nats-server)")
        self.spawn()
        processes.wait_until(self.is_ready, timeout_s, "nats-server", self.proc, self.log_path)
        return self

    def spawn(self) -> subprocess.Popen:
        """Starts it and returns at once (the supervisor's restart)."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [nats_binary() or "nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd",
               str(self.store_dir), "--server_name", f"hubmesh-{self.port}"]
        self.proc = processes.spawn(cmd, {}, self.log_path)
        return self.proc

    def kill(self) -> None:
        """SIGKILL to its process group, as a crashed node."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            processes.stop(self.proc)
            self.proc = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class Bus:
    """What the text services are told: HUBMESH_TEXT_ROUTING_BUS_URL/_SUBJECT/_STREAM, and why."""

    url: str
    subject: str
    stream: str
    how: str  # "given", "private", "shared", "off"
    server: NatsServer | None = None

    def env(self) -> dict[str, str]:
        return {"HUBMESH_TEXT_ROUTING_BUS_URL": self.url, "HUBMESH_TEXT_ROUTING_BUS_SUBJECT": self.subject,
                "HUBMESH_TEXT_ROUTING_BUS_STREAM": self.stream}


def choose_bus(run_dir: Path, env: dict[str, str] | None = None, prefer: str = "auto",
               port: int | None = None) -> Bus:
    """The bus of a stack with several text services (see the module's docstring); a private server
    is returned not yet started (Bus.server). `prefer`: auto, private, shared, off."""
    env = os.environ if env is None else env
    tag = f"s{os.getpid()}x{os.urandom(3).hex()}"  # this stack's own subject and stream on a shared server
    subject, stream = f"hubmesh.route.{tag}", f"HUBMESH_ROUTE_{tag}"
    if "HUBMESH_TEXT_ROUTING_BUS_URL" in env and prefer == "auto":
        url = env["HUBMESH_TEXT_ROUTING_BUS_URL"]
        return Bus(url, env.get("HUBMESH_TEXT_ROUTING_BUS_SUBJECT", subject),
                   env.get("HUBMESH_TEXT_ROUTING_BUS_STREAM", stream), "given" if url else "off")
    if prefer == "off":
        return Bus("", subject, stream, "off")
    if prefer in ("auto", "private") and nats_binary() is not None:
        server = NatsServer(run_dir, port)
        return Bus(server.url, "hubmesh.route", "HUBMESH_ROUTE", "private", server)
    if prefer in ("auto", "shared") and (server_info(SHARED_PORT) or {}).get("jetstream"):
        return Bus(f"nats://127.0.0.1:{SHARED_PORT}", subject, stream, "shared")
    return Bus("", subject, stream, "off")


def describe_bus(bus: Bus, services: int) -> str:
    if bus.how == "private":
        return f"a private nats-server on {bus.url} (JetStream; log {bus.server.log_path})"
    if bus.how == "shared":
        return f"the machine's NATS on {bus.url} (subject {bus.subject}.*, stream {bus.stream})"
    if bus.how == "given":
        return f"HUBMESH_TEXT_ROUTING_BUS_URL={bus.url}"
    return (f"none: no nats-server binary and no NATS on 127.0.0.1:{SHARED_PORT}; each of the {services} text "
            "services routes on its own prefix index (apt-get install nats-server for the shared view)")
