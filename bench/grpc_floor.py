"""The floor under the mesh's CPU per streamed token: the same token stream through bare processes
with no hubmesh code in them.

    source (gRPC server)  ->  grpc relay (gRPC client and server)  ->  http relay (gRPC client, HTTP server)  ->  sink

The source plays Triton: `streams` server-streaming calls, each sending a message every `step_s`
(as the engine simulator paces a batch). The gRPC relay plays the text service with nothing of its
own: each incoming stream's messages written one for one to a server stream of its own, no
protobuf (bytes in, bytes out), no parsing, no multiplexing. The HTTP relay plays the façade: each
message of its gRPC stream written to its HTTP client as a chunk of a chunked response (aiohttp,
as the façade writes SSE). The sink (this process) reads the HTTP streams. Every process runs
uvloop and the mesh's gRPC runtime settings (services.common.grpc_runtime).

The two relays' CPU per message (from /proc, every thread) is what grpc.aio, aiohttp and the kernel
cost a Python process for each token on each hop, before any code of the mesh's own runs: a floor
that the mesh's figures in bench/token_rate.py can be read against. A reader alone (this process,
reading the source's streams straight) gives the one part of it no design can share between tokens:
Triton sends each token of each request as a message of its own. Minimal unary requests through the
relays and straight to the source (alternating blocks, as bench/overhead.py) give what two bare hops
add to a request's latency and CPU.

    .venv/bin/python -m bench.grpc_floor [--streams 64] [--step-ms 22] [--tokens 256]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import socket
import statistics
import sys
import time

from services.common import grpc_runtime

grpc_runtime.apply(os.environ)

import aiohttp  # noqa: E402 - after the gRPC runtime settings, as the mesh's packages do
import grpc  # noqa: E402
import uvloop  # noqa: E402
from aiohttp import web  # noqa: E402

from bench.cpu import _group_cpu_s  # noqa: E402
from bench.overhead import _run  # noqa: E402
from local.processes import free_ports, spawn, stop, wait_until  # noqa: E402
from local.stack import ROOT  # noqa: E402

SERVICE = "floor.Tokens"
METHOD = f"/{SERVICE}/Stream"
UNARY = f"/{SERVICE}/Call"
PAYLOAD = b'data: {"choices":[{"index":0,"delta":{"content":" token"}}]}\n\n'  # an SSE chunk's size


async def _serve(port: int, stream, unary) -> None:
    """A gRPC server of the two methods (bytes in, bytes out) on `port`, until killed."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        "Stream": grpc.unary_stream_rpc_method_handler(stream), "Call": grpc.unary_unary_rpc_method_handler(unary)})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def _source(port: int, step_s: float) -> None:
    async def stream(request: bytes, context):
        for _ in range(int(request)):
            await asyncio.sleep(step_s)
            yield PAYLOAD

    async def unary(request: bytes, context) -> bytes:
        return PAYLOAD

    await _serve(port, stream, unary)


async def _grpc_relay(port: int, upstream: int) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{upstream}")
    call = channel.unary_stream(METHOD)
    unary_call = channel.unary_unary(UNARY)

    async def stream(request: bytes, context):
        upstream_call = call(request)
        while True:
            message = await upstream_call.read()
            if message is grpc.aio.EOF:
                return
            yield message

    async def unary(request: bytes, context) -> bytes:
        return await unary_call(request)

    await _serve(port, stream, unary)


async def _http_relay(port: int, upstream: int) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{upstream}")
    call = channel.unary_stream(METHOD)
    unary_call = channel.unary_unary(UNARY)

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        upstream_call = call(request.query["tokens"].encode())
        while True:
            message = await upstream_call.read()
            if message is grpc.aio.EOF:
                break
            await response.write(message)
        await response.write_eof()
        return response

    async def unary(request: web.Request) -> web.Response:
        return web.Response(body=await unary_call(await request.read()), content_type="application/json")

    app = web.Application()
    app.router.add_get("/stream", stream)
    app.router.add_post("/call", unary)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


ROLES = {"source": _source, "grpc-relay": _grpc_relay, "http-relay": _http_relay}


RELAYS = ("grpc-relay", "http-relay")


def _listening(port: int) -> bool:
    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    return True


async def _streams(port: int, streams: int, tokens: int) -> tuple[int, float]:
    """`streams` concurrent HTTP streams of `tokens` messages each; (messages received, seconds)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=streams)) as http:
        async def one() -> int:
            async with http.get(f"http://127.0.0.1:{port}/stream", params={"tokens": str(tokens)}) as response:
                received = 0
                async for data in response.content.iter_any():
                    received += len(data)
                return received // len(PAYLOAD)

        await asyncio.gather(*(one() for _ in range(min(streams, 8))))  # warm every hop's connections
        start = time.monotonic()
        received = sum(await asyncio.gather(*(one() for _ in range(streams))))
        return received, time.monotonic() - start


async def _grpc_reads(port: int, streams: int, tokens: int) -> tuple[int, float]:
    """This process reading `streams` concurrent streams straight from the source; (messages, CPU seconds)."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_stream(METHOD)

    async def one() -> int:
        stream, received = call(str(tokens).encode()), 0
        while await stream.read() is not grpc.aio.EOF:
            received += 1
        return received

    await asyncio.gather(*(one() for _ in range(min(streams, 8))))
    began = os.times()
    received = sum(await asyncio.gather(*(one() for _ in range(streams))))
    ended = os.times()
    await channel.close()
    return received, (ended.user + ended.system) - (began.user + began.system)


async def _unary(ports: dict[str, int], groups: dict[int, str], runs: tuple[tuple[int, int], ...]) -> dict:
    """Minimal requests through both relays (HTTP in, gRPC through) and straight to the source over
    gRPC, in alternating blocks: what two bare hops add to a request's latency and cost."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports['source']}")
    direct_call = channel.unary_unary(UNARY)
    out = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128)) as http:
        async def relayed() -> None:
            async with http.post(f"http://127.0.0.1:{ports['http-relay']}/call", data=b"{}") as response:
                await response.read()

        async def direct() -> None:
            await direct_call(b"{}")

        for concurrency, count in runs:
            await _run(concurrency, 64, relayed)  # warm
            await _run(concurrency, 64, direct)
            latencies: dict[str, list[float]] = {"relays": [], "direct": []}
            seconds = {"relays": 0.0, "direct": 0.0}
            relay_cpu = 0.0
            for block in range(4):
                order = [("relays", relayed), ("direct", direct)]
                for path, call in order if block % 2 == 0 else order[::-1]:
                    before = _group_cpu_s(groups)
                    lat, rate = await _run(concurrency, count // 4, call)
                    if path == "relays":
                        after = _group_cpu_s(groups)
                        relay_cpu += sum(after[role] - before[role] for role in RELAYS)
                    latencies[path] += lat
                    seconds[path] += len(lat) / rate
            p50 = {path: 1000 * statistics.median(values) for path, values in latencies.items()}
            rps = {path: len(latencies[path]) / seconds[path] for path in latencies}
            out[f"unary@{concurrency}"] = {
                "relays_p50_ms": round(p50["relays"], 3), "direct_p50_ms": round(p50["direct"], 3),
                "added_p50_ms": round(p50["relays"] - p50["direct"], 3),
                "relays_rps": round(rps["relays"], 1), "direct_rps": round(rps["direct"], 1),
                "rps_ratio": round(rps["relays"] / rps["direct"], 3),
                "relays_cpu_ms_per_request": round(1000 * relay_cpu / len(latencies["relays"]), 3),
            }
    await channel.close()
    return out


def measure(streams: int = 64, step_s: float = 0.022, tokens: int = 256,
            unary_runs: tuple[tuple[int, int], ...] = ((1, 400), (64, 1600))) -> dict:
    """The floor: at `streams` streams of `tokens` messages, one every `step_s`, µs of CPU per message
    of the gRPC relay (the text service's part) and of the HTTP relay (the façade's); for minimal
    requests at each (concurrency, count) of `unary_runs`, what the two relays add."""
    ports = dict(zip(ROLES, free_ports(len(ROLES))))
    upstream = {"source": str(step_s), "grpc-relay": str(ports["source"]), "http-relay": str(ports["grpc-relay"])}
    env = dict(os.environ)
    procs = []
    try:
        for role in ROLES:
            log = ROOT / "build" / "bench" / f"floor-{role}.log"
            proc = spawn([sys.executable, "-m", "bench.grpc_floor", "--role", role, "--port", str(ports[role]),
                          "--upstream", upstream[role]], env, log)
            procs.append(proc)
            wait_until(functools.partial(_listening, ports[role]), 30, f"the floor's {role}", proc, log)
        groups = {proc.pid: role for proc, role in zip(procs, ROLES)}  # each its own process group
        before = _group_cpu_s(groups)
        received, seconds = asyncio.run(_streams(ports["http-relay"], streams, tokens))
        after = _group_cpu_s(groups)
        read, read_s = uvloop.run(_grpc_reads(ports["source"], streams, tokens))  # on the services' loop
        unary = asyncio.run(_unary(ports, groups, unary_runs)) if unary_runs else {}
    finally:
        for proc in procs:
            stop(proc)
    per_message = {role: round(1e6 * (after[role] - before[role]) / max(received, 1), 1) for role in ROLES}
    return {
        "streams": streams, "step_ms": round(step_s * 1000, 1), "messages": received,
        "messages_per_s": round(received / seconds),
        "cpu_us_per_message": per_message,
        "relays_us_per_message": round(sum(per_message[role] for role in RELAYS), 1),
        # the one part of a token's work no mesh can share out: reading Triton's message for it
        "grpc_read_us_per_message": round(1e6 * read_s / max(read, 1), 1),
        "grpc_read_messages": read,
        **unary,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=sorted(ROLES))
    parser.add_argument("--port", type=int)
    parser.add_argument("--upstream")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--step-ms", type=float, default=22.0)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args(argv)
    if args.role is None:
        print(json.dumps(measure(args.streams, args.step_ms / 1000, args.tokens), indent=2))
        return
    role = ROLES[args.role]
    arg: float | int = float(args.upstream) if args.role == "source" else int(args.upstream)
    uvloop.run(role(args.port, arg))


if __name__ == "__main__":
    main()
