"""`make bench`: start the real stack once, measure each modality against its baseline, stop it.

Every figure is a ratio measured in the same run (the machine is noisy). The report is printed
and written to build/bench/report.json.
"""

import asyncio
import json
import os
import tempfile
from pathlib import Path

from bench import embeddings_throughput, images_latency, text_stream
from local.stack import ROOT, LocalStack, StackConfig


def main() -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="hubmesh-bench-"))
    with LocalStack(StackConfig.with_free_ports(api_key="bench", run_dir=run_dir)) as stack:
        report = {
            "cores": os.cpu_count(),
            "text_streaming": asyncio.run(text_stream.measure(stack, tokens=256, rounds=5)),
            "embeddings": embeddings_throughput.measure(stack, n=640, rounds=3),
            "images": asyncio.run(images_latency.measure(stack, rounds=3)),
            "rss_mib": text_stream.process_memory(stack),
        }
    out = ROOT / "build" / "bench" / "report.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
