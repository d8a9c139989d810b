"""Shared by the benchmarks: where results go, what machine measured them, and the README table."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
README = BENCH_DIR / "README.md"


def machine() -> dict[str, Any]:
    """What ran the benchmark, so figures from different machines are never compared by mistake."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH_DIR, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "commit": commit,
    }


def portable(value: Any) -> Any:
    """`value` with every absolute path made shareable: relative to the checkout when inside it, else the
    file's name alone (a temporary folder's name says nothing, and where this machine keeps files is its own).
    A path is a string of one line, no spaces, "/" then at least two names: not "/help", not a sentence."""
    if isinstance(value, dict):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [portable(item) for item in value]
    if isinstance(value, str) and value.startswith("/") and not any(c.isspace() for c in value):
        path = Path(value)
        if len(path.parts) >= 3:
            return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name
    return value


def write_result(name: str, command: str, figures: dict[str, Any]) -> Path:
    path = RESULTS_DIR / f"{name}.json"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": machine(),
        **portable(figures),
    }
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return path


def update_readme_section(name: str, markdown: str) -> None:
    """Replace the section between `<!-- name -->` markers in bench/README.md (append it if absent)."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    block = f"{start}\n{markdown.strip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    README.write_text(text)
