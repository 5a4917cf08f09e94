"""Process-wide logging set-up for the entry points."""

import logging
import os


def configure(component: str) -> None:
    """Logs to stderr with the component name; level from HUBMESH_LOG_LEVEL (default INFO)."""
    logging.basicConfig(
        level=os.environ.get("HUBMESH_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s {component} %(levelname)s %(name)s: %(message)s",
    )
