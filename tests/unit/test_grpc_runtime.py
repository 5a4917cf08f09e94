"""gRPC's runtime settings (services/common/grpc_runtime.py) are in place before gRPC starts."""

import os
import subprocess
import sys

from services.common import grpc_runtime


def test_apply_sets_the_experiments_unless_the_operator_did():
    env: dict[str, str] = {}
    grpc_runtime.apply(env)
    assert env["GRPC_EXPERIMENTS"] == grpc_runtime.EXPERIMENTS == "-event_engine_client,-event_engine_listener"
    for own in ("", "-event_engine_client"):  # even an empty value is the operator's choice
        env = {"GRPC_EXPERIMENTS": own}
        grpc_runtime.apply(env)
        assert env["GRPC_EXPERIMENTS"] == own


def test_the_processes_packages_apply_it_before_grpc_is_imported():
    """The façade's and the services' (and the launcher's and load generators': local)."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    for package in ("facade", "services", "local"):
        check = (f"import sys, os; import {package}; assert 'grpc' not in sys.modules; "
                 "print(os.environ['GRPC_EXPERIMENTS'])")
        out = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == grpc_runtime.EXPERIMENTS
