"""A private redis-server for tests and `make run`: on a free (or given) port of 127.0.0.1, nothing
on disk, stopped by its PID. `RedisServer.kill()` and `.start()` again on the same port are how the
tests play an outage and a restart."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

from local import processes


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def ping(port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or processes.free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> RedisServer:
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        cmd = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
               "--protected-mode", "yes", "--dir", str(self.log_path.parent)]
        self.proc = processes.spawn(cmd, {}, self.log_path)
        processes.wait_until(lambda: ping(self.port), timeout_s, "redis-server", self.proc, self.log_path)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crashed node: its data is gone (it keeps nothing on disk)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server hangs (connections stay open, nothing answers), as an overloaded one."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            processes.stop(self.proc)
            self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
