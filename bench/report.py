"""`make bench` outputs: report.json, report.md and one PNG (latency percentiles and throughput vs concurrency)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.cpu import EVENT_LOOP, GRPC_ENGINE, OTHER_THREADS


def _rows(report: dict) -> list[str]:
    lines = ["| measurement | hubmesh | direct Triton | ratio / added |", "| --- | --- | --- | --- |"]
    for name, r in report.get("overhead", {}).get("latency", {}).items():
        lines.append(
            f"| {name} p50 / p99 | {r['facade']['p50_ms']} / {r['facade']['p99_ms']} ms | "
            f"{r['direct']['p50_ms']} / {r['direct']['p99_ms']} ms | +{r['added_p50_ms']} / +{r['added_p99_ms']} ms |"
        )
        lines.append(f"| {name} req/s | {r['facade']['rps']} | {r['direct']['rps']} | {r['rps_ratio']} |")
    for name, r in report.get("overhead", {}).get("streaming", {}).items():
        lines.append(
            f"| echo stream, {name.replace('_', ' ')}: tokens/s (TTFT) | {r['facade']['tokens_per_s']} "
            f"({r['facade']['ttft_ms']} ms) | {r['direct']['tokens_per_s']} ({r['direct']['ttft_ms']} ms) | "
            f"{r['ratio']} (+{r['added_ttft_ms']} ms) |"
        )
    if "text_streaming" in report:
        r = report["text_streaming"]
        lines.append(f"| SmolLM2 stream tokens/s | {r['facade']['tokens_per_s']:.1f} | {r['direct']['tokens_per_s']:.1f} | "
                     f"{r['ratio_facade_vs_direct']:.3f} |")
    if "embeddings" in report:
        r = report["embeddings"]
        lines.append(f"| embeddings sentences/s @32 (vs in-process batches of 32) | {r['facade_sentences_per_s']:.1f} | "
                     f"{r['in_process_sentences_per_s']:.1f} | {r['ratio_facade_vs_in_process']:.3f} |")
    for size, r in report.get("images", {}).items():
        lines.append(f"| image {size} seconds | {r['facade_s']:.2f} | {r['direct_triton_s']:.2f} | "
                     f"{r['ratio_direct_vs_facade']:.3f} |")
    return lines


def _cpu_rows(report: dict) -> list[str]:
    """Where the cores went: CPU ms per request (or per 1000 streamed tokens) of each process group,
    on the hubmesh path and on the direct path."""
    overhead = report.get("overhead", {})
    measured = [(f"{name} (per request)", r["cpu_ms_per_request"]) for name, r in overhead.get("latency", {}).items()
                if "cpu_ms_per_request" in r and name.endswith("@64")]
    measured += [(f"echo stream, {name.replace('_', ' ')} (per 1000 tokens)",
                  {"facade": r["facade"]["cpu_ms_per_1000_tokens"], "direct": r["direct"]["cpu_ms_per_1000_tokens"]})
                 for name, r in overhead.get("streaming", {}).items() if "cpu_ms_per_1000_tokens" in r["facade"]]
    if not measured:
        return []
    groups = sorted({g for _, cpu in measured for path in cpu.values() for g in path})
    lines = ["", "## CPU time by process (ms)", "",
             "| measurement | path | " + " | ".join(groups) + " | total |",
             "| --- | --- | " + " | ".join("---" for _ in groups) + " | --- |"]
    for name, cpu in measured:
        for path, label in (("facade", "hubmesh"), ("direct", "direct Triton")):
            values = cpu[path]
            cells = " | ".join(str(values.get(g, "")) for g in groups)
            lines.append(f"| {name} | {label} | {cells} | {round(sum(values.values()), 3)} |")
    return lines


THREAD_GROUPS = (EVENT_LOOP, GRPC_ENGINE, OTHER_THREADS)


def token_rate_rows(report: dict) -> list[str]:
    """bench/token_rate.py: the mesh's CPU per streamed token, simulator runs then echo runs, and what
    it means for one H200 (the simulator's calibrated engine)."""
    rate = report.get("token_rate")
    if not rate:
        return []
    engine = rate.get("calibrated_engine", {})
    lines = ["| model, streams (time_scale) | inter-token p50 / p99 | tokens/s | façade / text service µs per token | "
             "**mesh µs per token** | tokens/s per mesh core | mesh cores per H200 | simulator late |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, runs in (("sim", rate.get("sim", {})), ("echo", rate.get("echo", {}))):
        for r in runs.values():
            us = r["cpu_us_per_token"]
            scale = f" (x{r['time_scale']:g})" if "time_scale" in r else ""
            cores = r.get("mesh_cores_per_h200", "")
            late = f"{r['sim_late_s']} s" if "sim_late_s" in r else ""
            lines.append(
                f"| {model}, {r['streams']}{scale} | {r['inter_token_ms_p50']} / {r['inter_token_ms_p99']} ms | "
                f"{r['tokens_per_s']} | {us.get('facade', 0)} / {us.get('text', 0)} | **{r['mesh_cpu_us_per_token']}** "
                f"({' / '.join(str(v) for v in r['mesh_cpu_us_per_token_rounds'])}) | "
                f"{r['tokens_per_s_per_mesh_core']} | {cores} | {late} |")
    lines += ["", "| model, streams | process | " + " | ".join(f"{g} user / kernel" for g in THREAD_GROUPS) + " |",
              "| --- | --- |" + " --- |" * len(THREAD_GROUPS)]
    for model, runs in (("sim", rate.get("sim", {})), ("echo", rate.get("echo", {}))):
        for r in runs.values():
            for process, groups in r.get("cpu_us_per_token_by_thread", {}).items():
                cells = [f"{groups[g]['user']} / {groups[g]['kernel']}" if g in groups else "" for g in THREAD_GROUPS]
                lines.append(f"| {model}, {r['streams']} | {process} | " + " | ".join(cells) + " |")
    lines += ["", f"Mesh = the façade and the text service (CPU from /proc, every thread); per round in brackets. "
              f"Mesh cores per H200: the simulator's calibrated engine (Llama-3-8B, batch {engine.get('batch')}, "
              f"{engine.get('context_tokens')} tokens of context each: {engine.get('step_ms')} ms a step, "
              f"{engine.get('tokens_per_s')} tokens/s) times the mesh's CPU per token. With time_scale x, a stream's "
              f"tokens come x times slower than on the GPU; the simulator's own CPU (Triton's, not in the mesh) "
              f"is what bounds the rate on these cores. The second table splits each mesh process's µs per "
              f"token by thread: the event loop's (where the Python runs), gRPC's EventEngine threads (its I/O), "
              f"the rest (grpc.aio's poller)."]
    return lines


def floor_rows(report: dict) -> list[str]:
    """bench/grpc_floor.py: the same token stream and minimal requests through bare relays, and the
    mesh's figures of the same run next to them."""
    floor = report.get("floor")
    if not floor:
        return []
    if "error" in floor:
        return [f"Not measured: {floor['error']}"]
    us = floor["cpu_us_per_message"]
    lines = [f"{floor['streams']} streams, a message every {floor['step_ms']} ms each ({floor['messages_per_s']} "
             f"messages/s), through processes with no hubmesh code: a gRPC source (Triton's part), a gRPC relay "
             f"(the text service's: each message read and written on, bytes only), an HTTP relay (the façade's: "
             f"each message written as a chunk), uvloop and the mesh's gRPC settings in each.", "",
             "| part | µs of CPU per token |", "| --- | --- |",
             f"| gRPC relay (text service's part) | {us['grpc-relay']} |",
             f"| HTTP relay (façade's part) | {us['http-relay']} |",
             f"| **both relays** | **{floor['relays_us_per_message']}** |",
             f"| reading the gRPC messages alone (one per token, as Triton sends them) | {floor['grpc_read_us_per_message']} |",
             f"| the source (Triton's part, not in the mesh) | {us['source']} |"]
    sim = next(iter((report.get("token_rate") or {}).get("sim", {}).values()), None)
    if sim is not None:
        lines.append(f"| the mesh, {sim['streams']} simulator streams (above) | {sim['mesh_cpu_us_per_token']} |")
    unary = [(key.split("@")[1], r) for key, r in floor.items() if key.startswith("unary@")]
    if unary:
        lines += ["", "| minimal request, concurrency | p50 relays / direct | added p50 | requests/s relays / direct "
                  "| relays' CPU per request |", "| --- | --- | --- | --- | --- |"]
        for concurrency, r in unary:
            lines.append(f"| {concurrency} | {r['relays_p50_ms']} / {r['direct_p50_ms']} ms | +{r['added_p50_ms']} ms | "
                         f"{r['relays_rps']} / {r['direct_rps']} ({r['rps_ratio']}) | {r['relays_cpu_ms_per_request']} ms |")
    return lines


def _peer_rows(peer: dict) -> list[str]:
    """hubmesh vs LiteLLM's proxy, figure by figure (what could be measured)."""
    lines = ["| measurement | hubmesh | LiteLLM | hubmesh / LiteLLM |", "| --- | --- | --- | --- |"]
    for level, r in (peer.get("chat_1_token") or {}).items():
        if isinstance(r, dict) and "hubmesh" in r:
            h, p = r["hubmesh"], r["litellm"]
            lines.append(f"| 1-token chat {level}: req/s | {h['requests_per_s']:.1f} | {p['requests_per_s']:.1f} | "
                         f"{h['requests_per_s'] / p['requests_per_s']:.2f}x |")
            lines.append(f"| 1-token chat {level}: p50 | {h['p50_ms']:.1f} ms | {p['p50_ms']:.1f} ms | "
                         f"{h['p50_ms'] / p['p50_ms']:.2f} |")
    for key, label in (("streaming", "SmolLM2"), ("echo_streaming", "echo")):
        r = peer.get(key) or {}
        if "hubmesh" in r:
            h, p = r["hubmesh"], r["litellm"]
            lines.append(f"| {label}, {r['streams']} streams x {r['tokens_per_stream']} tokens: tokens/s (TTFT) | "
                         f"{h['tokens_per_s']:.1f} ({h['ttft_ms']:.0f} ms) | {p['tokens_per_s']:.1f} "
                         f"({p['ttft_ms']:.0f} ms) | {h['tokens_per_s'] / p['tokens_per_s']:.2f}x |")
    r = peer.get("embeddings_passthrough") or {}
    if "hubmesh" in r:
        lines.append(f"| embeddings @{r['concurrency']} (peer only via Triton tensors in extra_body): sentences/s | "
                     f"{r['hubmesh']['sentences_per_s']:.1f} | {r['litellm']['sentences_per_s']:.1f} | "
                     f"{r['ratio_hubmesh_vs_peer_sentences_per_s']:.2f}x |")
    return lines if len(lines) > 2 else []


def _routing_rows(routing: dict) -> list[str]:
    """bench/routing.py: every strategy on both workloads, and the targets as measured ratios."""
    if "error" in routing:
        return [f"Not measured: {routing['error']}"]
    lines = []
    params = ", ".join(f"{k} {v}" for k, v in routing.get("sim_parameters", {}).items())
    lines.append(f"{routing.get('replicas')} simulated Tritons (`sim`: Llama-3-8B on one H200 in time; {params}) "
                 f"behind the text service, driven over its gRPC API on an open-loop Poisson schedule (seed "
                 f"{routing.get('seed')}), the same for every strategy; each run starts from empty KV caches; "
                 f"{routing.get('offered_load_note', '')}.")
    lines.append("")
    for workload, info in routing.get("workloads", {}).items():
        runs = routing.get(workload) or {}
        costs = routing.get("picker_cost_us", {}).get(workload, {})
        rate = routing.get("offered_load_requests_per_s", {}).get(workload)
        lines += [f"**{workload.replace('_', ' ')}** ({info['description']}; {rate} req/s offered for "
                  f"{info['duration_s']:g} s, the first {info['warmup_s']:g} s not counted):", "",
                  "| strategy | TTFT p50 / p99 | end-to-end p50 / p99 | output tokens/s | prefix-cache hit ratio | "
                  "busiest replica / mean | picker µs p50 / p99 | mesh CPU (cores) | errors |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for label, r in runs.items():
            cost = costs.get(r.get("strategy", label), {})
            picker = (f"{cost['p50_us']} / {cost['p99_us']}" if "p50_us" in cost
                      else ("missing" if cost else ""))
            errors = sum((r.get("errors") or {}).values())
            lines.append(
                f"| {label} | {r['ttft_p50_ms']} / {r['ttft_p99_ms']} ms | {r['e2e_p50_ms']} / {r['e2e_p99_ms']} ms | "
                f"{r['output_tokens_per_s']} | {r['prefix_hit_ratio']} | {r['busiest_over_mean']} | {picker} | "
                f"{r.get('mesh_cpu_cores')} | {errors}/{r['requests']} |")
        lines.append("")
    lines += _scale_out_rows(routing)
    for workload, ratios in routing.get("targets", {}).items():
        lines.append(f"Targets, {workload.replace('_', ' ')}: " + "; ".join(f"{k}: {v}" for k, v in ratios.items()) + ".")
    if routing.get("wall_s") is not None:
        lines.append("")
        lines.append(f"Routing section: {routing['wall_s']} s of wall time (`python -m bench.routing` runs it alone).")
    return lines


def _scale_out_rows(routing: dict) -> list[str]:
    """bench/routing.py's table by text-service count (issue 29), the shared view's cost, the chaos curve."""
    scale = routing.get("scale_out")
    if not scale:
        return []
    lines = ["**By text-service count** (prefix strategy, the same 4 Tritons and schedules; requests spread over "
             "the services round robin as the façade's links do; \"shared view\": their pickers share placements "
             "and calls in flight over a private nats-server, services/text/prefix_view.py):", "",
             "| workload | text services | TTFT p50 / p99 | end-to-end p50 / p99 | output tokens/s | "
             "prefix-cache hit ratio | busiest replica / mean | mesh CPU (cores) | errors |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for workload, runs in scale.items():
        for label, r in runs.items():
            errors = sum((r.get("errors") or {}).values())
            lines.append(
                f"| {workload.replace('_', ' ')} | {label} | {r['ttft_p50_ms']} / {r['ttft_p99_ms']} ms | "
                f"{r['e2e_p50_ms']} / {r['e2e_p99_ms']} ms | {r['output_tokens_per_s']} | {r['prefix_hit_ratio']} | "
                f"{r['busiest_over_mean']} | {r.get('mesh_cpu_cores')} | {errors}/{r['requests']} |")
    lines.append("")
    for workload, cost in (routing.get("view_cost_us") or {}).items():
        own = (routing.get("picker_cost_us", {}).get(workload) or {}).get("prefix", {})
        if "publish_p50_us" in cost:
            lines.append(f"Shared view's cost per decision, {workload.replace('_', ' ')}: +{cost['publish_p50_us']} / "
                         f"+{cost['publish_p99_us']} µs p50 / p99 on the request's path (the picker's own: "
                         f"{own.get('p50_us')} / {own.get('p99_us')} µs); applying one peer's decision off the path: "
                         f"{cost['apply_p50_us']} / {cost['apply_p99_us']} µs.")
    lines.append("")
    lines += chaos_rows(routing.get("chaos"))
    return lines


def chaos_rows(chaos: dict | None) -> list[str]:
    if not chaos:
        return []
    if "error" in chaos:
        return [f"Chaos run not measured: {chaos['error']}"]
    lines = ["**Chaos** (4 text services, shared-prefix workload): " + "; ".join(
        f"{name} at {at} s" for name, at in chaos["events"]) + f". Requests {chaos['requests']}, errors "
        f"{chaos['errors'] or 0}; hit ratio before {chaos['hit_ratio_before']}; back within 0.05 of it after: "
        + ", ".join(f"{k}: {v} s" for k, v in chaos["back_within_0.05_after_s"].items()) + "."
        + (f" Streams moved to another text service: {chaos['streams_moved']}." if chaos.get("streams_moved") else ""),
        "",
        "| second | requests | errors | hit ratio | TTFT p50 / p99 |", "| --- | --- | --- | --- | --- |"]
    for row in chaos["curve"]:
        lines.append(f"| {row['second']} | {row['requests']} | {row['errors']} | {row['hit_ratio']} | "
                     f"{row['ttft_p50_ms']} / {row['ttft_p99_ms']} ms |")
    return lines


def stall_rows(stalls: dict) -> list[str]:
    """One row per way of hanging a replica, and the saturation run (bench/stalls.py)."""
    if "error" in stalls:
        return [f"Not measured: {stalls['error']}"]
    lines = ["| hung by | uninterrupted | hung | added | noticed after (by) | routed there after | back after | "
             "errors / wrong texts |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for how in ("sigstop", "partition"):
        f = stalls.get(how)
        if f:
            lines.append(f"| {how} | {f['uninterrupted_s']} s | {f['hung_s']} s | +{f['added_s']} s | "
                         f"{f['noticed_after_s']} s ({f['noticed_by']}) | {f['requests_routed_there_after_noticed']} | "
                         f"{f['back_in_service_after_s']} s | {f['client_errors']} / {f['wrong_texts']} |")
    sat = stalls.get("saturation")
    if sat:
        lines += ["", f"Saturated for {sat.get('seconds')} s: {sat.get('stalls')} stalls, {sat.get('migrations')} "
                  f"migrations, {sat.get('client_errors')} errors."]
    return lines



def noisy_neighbour_rows(noisy: dict) -> list[str]:
    from bench.noisy_neighbour import rows

    return rows(noisy)


def keys_rows(keys: dict) -> list[str]:
    from bench.keys import rows

    return rows(keys)

def write(report: dict, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = directory / "report.json", directory / "report.md", directory / "report.png"
    json_path.write_text(json.dumps(report, indent=2))
    md = ["# hubmesh benchmark", "", f"Cores: {report.get('cores')}. Every ratio was measured in the same run.", ""]
    if report.get("configuration"):
        md += ["Configuration: " + ", ".join(f"{k}: {v}" for k, v in report["configuration"].items()) + ".", ""]
    md += _rows(report)
    md += _cpu_rows(report)
    if report.get("token_rate"):
        md += ["", "## Mesh CPU per streamed token (engine simulator at GPU-like rates)", "", *token_rate_rows(report)]
    if report.get("floor"):
        md += ["", "## The floor under it: bare gRPC and HTTP relays", "", *floor_rows(report)]
    routing = report.get("routing")
    if routing is not None:
        md += ["", "## Routing over Triton replicas (engine simulator)", "", *_routing_rows(routing)]
    hung = report.get("stalls")
    if hung is not None:
        md += ["", "## A replica that hangs (engine simulator; docs/stalls.md)", "", *stall_rows(hung)]
    if report.get("noisy_neighbour") is not None:
        md += ["", "## A noisy neighbour: fair share at capacity (engine simulator; bench/noisy_neighbour.py)", "",
               *noisy_neighbour_rows(report["noisy_neighbour"])]
    if report.get("keys") is not None:
        md += ["", "## Keys the hub issues (bench/keys.py)", "", *keys_rows(report["keys"])]
    peer = report.get("peer")
    if peer is not None:
        md += ["", "## Peer gateway (LiteLLM proxy, same Triton)", "", *_peer_rows(peer), "",
               "Details (setup, what the peer cannot do, raw figures):", "", "```", json.dumps(peer, indent=2), "```"]
    md += ["", f"![latency and throughput]({png_path.name})", ""]
    md_path.write_text("\n".join(md))
    _plot(report, png_path)
    return [json_path, md_path, png_path]


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency = report.get("overhead", {}).get("latency", {})
    streaming = report.get("overhead", {}).get("streaming", {})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(latency)
    x = range(len(names))
    for offset, (label, key) in enumerate((("hubmesh", "facade"), ("direct", "direct"))):
        left.bar([i + offset * 0.4 for i in x], [latency[n][key]["p50_ms"] for n in names], 0.4, label=f"{label} p50")
        left.scatter([i + offset * 0.4 for i in x], [latency[n][key]["p99_ms"] for n in names], marker="_", s=300,
                     color="black", label="p99" if offset == 0 else None)
    left.set_xticks([i + 0.2 for i in x], names, rotation=20, fontsize=8)
    left.set_ylabel("ms")
    left.set_title("latency of minimal requests")
    left.legend(fontsize=8)
    counts = [int(k.split("_")[0]) for k in streaming]
    for label, key in (("hubmesh", "facade"), ("direct Triton", "direct")):
        right.plot(counts, [streaming[k][key]["tokens_per_s"] for k in streaming], marker="o", label=label)
    right.set_xscale("log", base=2)
    right.set_xlabel("concurrent streams")
    right.set_ylabel("tokens/s (all streams)")
    right.set_title("streaming throughput vs concurrency (echo model)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
