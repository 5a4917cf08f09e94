"""Figures the end-to-end tests measure, kept in a JSON report under build/ (one entry per name)."""

from __future__ import annotations

import json
from pathlib import Path


def record(report: Path, name: str, figures: dict) -> None:
    report.parent.mkdir(parents=True, exist_ok=True)
    entries = json.loads(report.read_text()) if report.exists() else {}
    entries[name] = figures
    report.write_text(json.dumps(entries, indent=2))
