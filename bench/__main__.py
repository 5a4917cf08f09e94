"""`make bench`: start the real stack once, measure every figure against its baseline in the same run,
stop it. Writes build/bench/report.{json,md,png}.

- overhead: minimal requests (1-token chat on the echo model, a tiny embedding) and echo streams at
  1/16/64 through the façade vs straight to Triton over gRPC;
- token_rate: the mesh's CPU per streamed token at GPU-like token rates (64 and 128 streams of the
  engine simulator, `sim`, at a time_scale its CPU keeps up with), tokens/s one mesh core carries,
  mesh cores per H200 (bench/token_rate.py);
- text_streaming: SmolLM2 streamed tokens/s, façade vs Triton;
- embeddings: sentences/s at concurrency 32 vs the model in-process in batches of 32;
- images: seconds per image by size, façade vs Triton;
- peer: the same Triton behind LiteLLM's proxy vs behind hubmesh (needs `make peer-venv`);
- floor: the same token stream and minimal requests through bare gRPC and HTTP relays with no hubmesh
  code (bench/grpc_floor.py), after the stack has stopped: what grpc.aio, aiohttp and the kernel cost
  before the mesh's own code runs;
- routing: 4 simulated Tritons behind the text service, round_robin / least_request / prefix (and
  prefix with 2 pickers) at the same offered load, on a shared-prefix and a no-shared-prefix workload
  (bench/routing.py, its own stack, started once the main one is stopped);
- stalls: 3 simulated Tritons, 18 streams; the busiest replica frozen (SIGSTOP), then one cut off in its
  network namespace: time added to the round, time to quarantine and back; a saturated engine for 3
  minutes with no stall declared (bench/stalls.py, docs/stalls.md);
- noisy_neighbour: tenant B at a modest rate alone, then beside tenant A flooding at 5x the text
  service's capacity, with first_come and then fair admission: B's success rate and TTFT, A's goodput
  against what B leaves (bench/noisy_neighbour.py, its own stack);
- limits: the limiter's memory and cost per request with 100k subjects, in-process and in Redis
  (bench/limits.py);
- keys: verifying a hub-issued key vs a JWT, and a revocation's delay across three façades sharing
  Redis (bench/keys.py).
"""

import asyncio
import json
import os

from bench import (
    bench_config, cpu, embeddings_throughput, grpc_floor, images_latency, keys, limits, noisy_neighbour, overhead,
    peer_litellm, report, routing, stalls, text_stream, token_rate,
)
from local.stack import ROOT, LocalStack


def main() -> None:
    with LocalStack(bench_config("bench")) as stack:
        results = {
            "cores": os.cpu_count(),
            "configuration": {
                "event loop": os.environ.get("HUBMESH_EVENT_LOOP", "uvloop"),
                "tracing": "on (OTLP)" if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "off (no OTEL endpoint)",
                "façade and service processes": "1 each",
            },
            "overhead": asyncio.run(overhead.measure(stack)),
            "token_rate": asyncio.run(token_rate.measure(stack)),
            "text_streaming": asyncio.run(text_stream.measure(stack, tokens=256, rounds=3)),
            "embeddings": embeddings_throughput.measure(stack, n=640, rounds=3),
            "images": asyncio.run(images_latency.measure(stack, rounds=2)),
            "peer": peer_litellm.measure(stack),
            "rss_mib": cpu.process_memory(stack),
        }
    try:  # bare processes of its own, once the stack has stopped
        results["floor"] = grpc_floor.measure()
    except Exception as err:  # noqa: BLE001 - the other figures are still written
        results["floor"] = {"error": f"{type(err).__name__}: {err}"}
    try:  # its own stack (4 sim Tritons), after the main one has stopped: the cores are its own
        results["routing"] = routing.measure()
    except Exception as err:  # noqa: BLE001 - the other figures are still written
        results["routing"] = {"error": f"{type(err).__name__}: {err}"}
    try:  # its own stack (3 sim Tritons): a replica frozen, one cut off in a namespace, one saturated
        results["stalls"] = stalls.measure(saturation_s=180.0)
    except Exception as err:  # noqa: BLE001 - the other figures are still written
        results["stalls"] = {"error": f"{type(err).__name__}: {err}"}
    try:  # its own stack (1 sim Triton): tenant A flooding beside tenant B, first_come then fair admission
        results["noisy_neighbour"] = noisy_neighbour.measure()
    except Exception as err:  # the other figures are still written
        results["noisy_neighbour"] = {"error": f"{type(err).__name__}: {err}"}
    results["limits"] = limits.measure()  # no stack: the limiter's stores alone (a private redis-server)
    try:  # no stack: three façades in this process on a private redis-server
        results["keys"] = keys.measure()
    except Exception as err:  # noqa: BLE001 - the other figures are still written
        results["keys"] = {"error": f"{type(err).__name__}: {err}"}
    written = report.write(results, ROOT / "build" / "bench")
    print(json.dumps(results, indent=2))
    print("written:", ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
