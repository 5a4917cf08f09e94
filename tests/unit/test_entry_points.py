"""The project imports the same way however it is started: the venv's own path file (`make setup`
writes it, as an editable install would) names the clone and its generated code, so every entry point
of the README, the Makefile and the images imports with no PYTHONPATH, from any directory."""

from __future__ import annotations

import subprocess
import sys

# each one reaches the generated protobuf code (hubmesh.*_pb2) through its imports
ENTRY_MODULES = ("local.stack", "facade.app", "services.text.servicer", "services.embeddings.servicer",
                 "services.images.servicer", "bench.routing", "bench.grpc_floor")


def test_every_entry_point_imports_from_anywhere_with_no_pythonpath(tmp_path):
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nprint('ok')"
    done = subprocess.run([sys.executable, "-c", code, *ENTRY_MODULES], cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr[-3000:]


def test_the_generated_code_comes_from_the_clone_not_from_a_path_set_by_hand(tmp_path):
    code = "import sys; from hubmesh.common.v1 import common_pb2; print(common_pb2.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("build/gen/hubmesh/common/v1/common_pb2.py")
