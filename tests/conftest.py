import os

# before anything imports grpc: see local/__init__.py (fork handlers that can deadlock a test's fork)
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "services" / "text" / "model_repository" / "smollm2" / "1"
# sampling.py lives beside model.py inside the Triton model repository
sys.path.insert(0, str(MODEL_DIR))
