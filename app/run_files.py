"""What a run leaves on disk that the pages show: the tail of its training log and its checkpoints."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from app.config import Settings

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def run_dir(settings: Settings, run_id: str) -> Path:
    return settings.runs_dir / run_id


def log_tail(settings: Settings, run_id: str, lines: int = 200) -> list[str]:
    """The last `lines` lines of the run's train.log (read from the end: logs can be large)."""
    path = run_dir(settings, run_id) / "train.log"
    if not path.is_file():
        return []
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        block = min(size, max(4096, lines * 400))
        handle.seek(size - block)
        text = handle.read().decode("utf-8", errors="replace")
    return text.splitlines()[-lines:]


def checkpoints(settings: Settings, run_id: str) -> list[dict[str, Any]]:
    """The run's checkpoints, oldest first, with their step and size."""
    root = run_dir(settings, run_id) / "checkpoints"
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = CHECKPOINT.match(path.name)
            if match and path.is_dir():
                size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                found.append({"name": path.name, "step": int(match.group(1)), "size_bytes": size})
    return sorted(found, key=lambda c: c["step"])


def tree_size(path: Path) -> int:
    """Bytes of every file below `path` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def removal_summary(settings: Settings, run_id: str) -> dict[str, Any]:
    """What deleting the run removes from disk: its directory, that directory's size, and what it holds."""
    root = run_dir(settings, run_id)
    return {
        "directory": str(root),
        "exists": root.is_dir(),
        "size_bytes": tree_size(root),
        "entries": sorted(p.name for p in root.iterdir()) if root.is_dir() else [],
        "checkpoints": len(checkpoints(settings, run_id)),
    }


def remove_run_dir(settings: Settings, run_id: str) -> None:
    """Delete the run's directory: spec.json, checkpoints, adapter, merged model, train.log."""
    root = run_dir(settings, run_id)
    if root.is_dir() and root.resolve().is_relative_to(settings.runs_dir.resolve()):
        shutil.rmtree(root)
