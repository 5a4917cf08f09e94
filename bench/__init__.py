"""`make bench` and `make profile`: measurements of the real stack against their baselines."""

from __future__ import annotations

import tempfile
from pathlib import Path

from local.stack import ROOT, StackConfig

# the benchmark catalogue: the default models plus `echo`, which streams as fast as Triton carries it,
# and `sim`, the engine simulator (the routing figures use it alone: SIM_CATALOG)
BENCH_CATALOG = ROOT / "services" / "text" / "catalog.bench.toml"
SIM_CATALOG = ROOT / "services" / "text" / "catalog.sim.toml"


def bench_config(api_key: str) -> StackConfig:
    """A stack on free ports in a fresh run directory, with the `echo` benchmark model and the
    simulator served (the text service is ready only when every catalogued model is)."""
    config = StackConfig.with_free_ports(api_key=api_key, run_dir=Path(tempfile.mkdtemp(prefix=f"hubmesh-{api_key}-")))
    config.extra_models["text"] = ["echo", "sim"]
    config.extra_env["HUBMESH_TEXT_CATALOG"] = str(BENCH_CATALOG)
    # bench/token_rate.py streams 128 at once: above the services' default admission limit (64)
    config.extra_env["HUBMESH_MAX_IN_FLIGHT"] = "512"
    return config
