"""Every process behind a modality's target, for GET /v1/mesh: the façade's own channels spread calls
round robin, so a Describe on them is answered by whichever service replica comes next; with 2–10
text-service pods the operator wants each one. The target's addresses are resolved as the channel
resolves them — `ipv4:a,b` as listed, `dns:///host:port` or `host:port` through DNS (a headless
Kubernetes Service gives one address per pod) — and each address gets a channel of its own, kept
while the address stays and closed once it is gone."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

import grpc

from hubmesh.common.v1 import mesh_pb2_grpc
from services.common.grpc_options import CHANNEL_OPTIONS

log = logging.getLogger(__name__)


def _split(target: str) -> tuple[str, str] | None:
    """(host, port) of a `dns:///host:port` or `host:port` target; None for a form not resolved here."""
    name = target.removeprefix("dns:///").removeprefix("dns:")
    if "://" in name or name.startswith(("unix:", "ipv6:", "vsock:")):
        return None
    host, sep, port = name.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), port


def _address(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ipaddress.ip_address(host).version == 6 else f"{host}:{port}"


async def addresses(target: str) -> list[str]:
    """The addresses behind `target`, in a stable order; [target] itself where it names no list and
    no host to resolve (or the name does not resolve: its own channel then says why)."""
    if target.startswith("ipv4:"):
        return sorted({a.strip() for a in target.removeprefix("ipv4:").split(",") if a.strip()})
    split = _split(target)
    if split is None:
        return [target]
    host, port = split
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        log.warning("mesh: %s does not resolve: %s", target, err)
        return [target]
    return sorted({_address(str(info[4][0]), port) for info in infos}) or [target]


class Instances:
    """A Mesh stub per address (address -> channel), for asking each service replica."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def stubs(self, target: str) -> dict[str, mesh_pb2_grpc.MeshStub]:
        """A stub for each address behind `target` now; channels to addresses gone since are closed."""
        found = await addresses(target)
        for address in found:
            if address not in self._channels:
                self._channels[address] = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return {address: mesh_pb2_grpc.MeshStub(self._channels[address]) for address in found}

    async def forget(self, keep: set[str]) -> None:
        """Closes the channels of every address not in `keep`."""
        for address in [a for a in self._channels if a not in keep]:
            await self._channels.pop(address).close(grace=None)

    async def close(self) -> None:
        await self.forget(set())
