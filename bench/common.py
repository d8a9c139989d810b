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


# --- two sides (loradeck's engine, a stock trainer) compared in fresh processes, alternating


def spawn_child(script: str, side: str, spec: dict[str, Any], env: dict[str, str], work: Path) -> dict[str, Any]:
    """One side in a fresh process: `script --child SIDE SPEC RESULT`, its output in work/output.log; the
    figures it wrote."""
    import sys

    work.mkdir(parents=True, exist_ok=True)
    spec_path, result = work / "spec.json", work / "result.json"
    spec_path.write_text(json.dumps(spec))
    with (work / "output.log").open("wb") as output:
        code = subprocess.run(
            [sys.executable, script, "--child", side, str(spec_path), str(result)],
            env=env,
            cwd=REPO,
            stdout=output,
            stderr=output,
        ).returncode
    if code:
        raise RuntimeError(f"the {side} run exited with {code}:\n{(work / 'output.log').read_text()[-3000:]}")
    figures: dict[str, Any] = json.loads(result.read_text())
    return figures


def side_speed(side: str, figures: dict[str, Any], warmup: int) -> dict[str, Any]:
    """A side's steady tokens/s, from its `warmup`-th logged point to the last (loradeck's points count
    tokens_seen, a stock trainer's TRL's num_tokens, recorded as `tokens`)."""
    if side == "loradeck":
        points = [{"step": p["step"], "time": p["time"], "tokens": p["tokens_seen"]} for p in figures["points"]]
    else:
        points = figures["points"]
    start, end = points[warmup - 1], points[-1]
    rate = float(end["tokens"] - start["tokens"]) / (end["time"] - start["time"])
    return {"tokens_per_s": rate, "tokens": points[-1]["tokens"], "train_s": figures["train_s"]}


def speed_ratio(speed: dict[str, list[dict[str, Any]]], target: float) -> dict[str, Any]:
    """loradeck's median tokens/s over the stock side's, with each alternating pair's ratio."""
    import statistics

    ours, stock = speed["loradeck"], speed["stock"]
    ratio = statistics.median(r["tokens_per_s"] for r in ours) / statistics.median(r["tokens_per_s"] for r in stock)
    return {
        "loradeck_tokens_per_s": [round(r["tokens_per_s"], 1) for r in ours],
        "stock_tokens_per_s": [round(r["tokens_per_s"], 1) for r in stock],
        "loradeck_tokens": [r["tokens"] for r in ours],
        "stock_tokens": [r["tokens"] for r in stock],
        "same_tokens": [r["tokens"] for r in ours] == [r["tokens"] for r in stock],
        "ratio": ratio,
        "ratio_per_pair": [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(ours, stock, strict=True)],
        "target": target,
        "met": ratio >= target,
    }


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def publish(name: str, table: str, *, quick: bool) -> None:
    """The table printed, and written into the README's section unless a quick run."""
    if not quick:
        update_readme_section(name, table)
    print(table)


def trained_run(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """A run of `values` (RunSpec fields) created as the form creates it and trained here, through loradeck's engine,
    to its end: its id, seconds, steps, stored evaluation and train metric points (app.models.Metric)."""
    import time

    from app import runs
    from app.db import get_sessionmaker
    from app.schemas import RunSpec
    from worker.engine.train import run_training

    spec = RunSpec.model_validate(values | {"name": f"bench-{name}", "save_steps": 0})
    with get_sessionmaker()() as session:
        run = runs.create_run(session=session, spec=spec)
    started = time.perf_counter()
    run_training(run.id)
    seconds = time.perf_counter() - started
    with get_sessionmaker()() as session:
        done = runs.get_run(session=session, run_id=run.id)
        if done.status != "succeeded":
            raise RuntimeError(f"the {name} run {done.status}: {done.error}")
        metrics = [m for m in runs.list_metrics(session=session, run_id=run.id) if m.kind == "train"]
        return {
            "run_id": run.id,
            "seconds": round(seconds, 1),
            "steps": spec.max_steps,
            "evaluation": done.evaluation or {},
            "metrics": metrics,
        }
