"""Web figures: start-up, the runs list with 10,000 runs, metrics of a run with 1,000,000 points, and the
live latency from a worker's log to an SSE client (one viewer, then 200 viewers of the same run).

    .venv/bin/python bench/web.py [--quick]

Everything runs on loopback against a real uvicorn process, a real redis-server and a SQLite file, all
made and removed by this script. Absolute figures (p50, p95), as the targets are absolute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import update_readme_section, write_result  # noqa: E402


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 2),
        "p95_ms": round(percentile(values, 95) * 1000, 2),
        "n": len(values),
    }


class Server:
    """uvicorn on a free port over a scratch data dir, with its own redis-server."""

    def __init__(self, root: Path) -> None:
        from app.processes import free_port, start_redis

        self.redis_port, self.port = free_port(), free_port()
        self.redis = start_redis(port=self.redis_port, directory=root / "redis", persist=False)
        self.env = dict(
            os.environ, LORADECK_DATA_DIR=str(root / "data"), REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0"
        )
        subprocess.run(
            [sys.executable, "-m", "app.cli", "migrate"], env=self.env, cwd=REPO, check=True, capture_output=True
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.web: subprocess.Popen[bytes] | None = None

    def start_web(self) -> float:
        """Start uvicorn; seconds from spawning the process to its first answer."""
        started = time.perf_counter()
        args = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(self.port), "--log-level", "warning"]
        self.web = subprocess.Popen(args, env=self.env, cwd=REPO)
        while True:
            try:
                if httpx.get(self.url + "/runs/new", timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                time.sleep(0.005)

    def stop_web(self) -> None:
        if self.web is not None:
            self.web.terminate()
            self.web.wait()
            self.web = None

    def close(self) -> None:
        self.stop_web()
        self.redis.terminate()
        self.redis.wait()


def bench_startup(server: Server, repeats: int) -> dict[str, Any]:
    code = (
        "import sys,time; t=time.perf_counter(); import app.main; print(time.perf_counter()-t); "
        "print(','.join(m for m in ('torch','transformers','peft','bitsandbytes') if m in sys.modules))"
    )
    imports, firsts, heavy = [], [], set()
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", code], env=server.env, cwd=REPO, capture_output=True, text=True, check=True
        )
        seconds, loaded = out.stdout.splitlines()[0], (out.stdout.splitlines() + [""])[1]
        imports.append(float(seconds))
        heavy |= set(filter(None, loaded.split(",")))
        firsts.append(server.start_web())
        server.stop_web()
    return {"import": summary(imports), "first_response": summary(firsts), "ml_libraries_imported": sorted(heavy)}


def fill_database(server: Server, runs: int, points: int) -> None:
    from sqlalchemy import create_engine, insert

    from app.models import Metric, Run

    engine = create_engine(f"sqlite:///{Path(server.env['LORADECK_DATA_DIR']) / 'loradeck.db'}")
    spec = {"method": "qlora", "base_model": "assets/tiny-llama", "r": 8, "learning_rate": 2e-4}
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(insert(Run), [
            {"id": f"r{i:06d}", "name": f"run {i}", "status": ("succeeded", "failed", "queued")[i % 3], "spec": spec,
             "created_at": now - timedelta(seconds=i), "cancel_requested": False, "step": i % 500, "max_steps": 500}
            for i in range(runs)
        ])  # fmt: skip
        connection.execute(
            insert(Run),
            [
                {
                    "id": "big",
                    "name": "big",
                    "status": "succeeded",
                    "spec": spec,
                    "cancel_requested": False,
                    "step": points,
                }
            ],
        )
        batch = 100_000
        for start in range(0, points, batch):
            connection.execute(insert(Metric), [
                {"run_id": "big", "step": s, "kind": "train", "time": s * 0.05, "loss": 2 / (1 + s / 1e4),
                 "learning_rate": 2e-4, "grad_norm": 0.5, "tokens_per_sec": 4000.0, "tokens_seen": s * 512}
                for s in range(start + 1, min(points, start + batch) + 1)
            ])  # fmt: skip


def timed_gets(url: str, requests: int) -> list[float]:
    times = []
    with httpx.Client(timeout=60) as client:
        client.get(url)  # warm
        for _ in range(requests):
            started = time.perf_counter()
            response = client.get(url)
            times.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text[:200]
    return times


async def live_latency(server: Server, viewers: int, events: int) -> dict[str, Any]:
    """Publish metric events the way the worker does and time their arrival at `viewers` SSE clients."""
    from app.contracts.events import DoneEvent, MetricEvent
    from worker.runtime.publisher import EventPublisher

    run_id = f"live{viewers}"
    from sqlalchemy import create_engine, insert

    from app.models import Run

    engine = create_engine(f"sqlite:///{Path(server.env['LORADECK_DATA_DIR']) / 'loradeck.db'}")
    with engine.begin() as connection:
        connection.execute(
            insert(Run),
            [{"id": run_id, "name": run_id, "status": "running", "spec": {}, "cancel_requested": False, "step": 0}],
        )
    latencies: list[float] = []
    connected = asyncio.Event()
    ready = 0

    async def viewer(client: httpx.AsyncClient) -> None:
        nonlocal ready
        async with client.stream("GET", f"{server.url}/api/v1/runs/{run_id}/events?after_step=0") as response:
            ready += 1
            if ready == viewers:
                connected.set()
            data = None
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    data = json.loads(line[6:])
                    if "time" in data:
                        latencies.append(time.time() - data["time"])
                    if data.get("status") == "succeeded":
                        return

    limits = httpx.Limits(max_connections=viewers + 10, max_keepalive_connections=viewers + 10)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=120), limits=limits) as client:
        tasks = [asyncio.create_task(viewer(client)) for _ in range(viewers)]
        await asyncio.wait_for(connected.wait(), 60)
        await asyncio.sleep(0.5)
        publisher = EventPublisher(server.env["REDIS_URL"], run_id, maxlen=20_000)
        for step in range(1, events + 1):
            # The point's `time` carries the wall clock at sending, so a viewer can tell the latency.
            publisher.publish(MetricEvent(step=step, kind="train", loss=1.0, time=time.time()))
            await asyncio.sleep(0.05)
        publisher.publish(DoneEvent(status="succeeded"))
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
    return summary(latencies) | {"viewers": viewers, "events": events}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke test of the script)")
    args = parser.parse_args()
    runs, points = (1_000, 50_000) if args.quick else (10_000, 1_000_000)
    root = Path(tempfile.mkdtemp(prefix="loradeck-web-bench-"))
    server = Server(root)
    try:
        startup = bench_startup(server, 3 if args.quick else 7)
        fill_database(server, runs, points)
        server.start_web()
        requests = 40 if args.quick else 200
        results = {
            "startup": startup,
            "runs_api": summary(timed_gets(f"{server.url}/api/v1/runs?limit=100", requests)) | {"runs_in_db": runs},
            "runs_page": summary(timed_gets(f"{server.url}/", requests)) | {"runs_in_db": runs},
            "metrics": summary(timed_gets(f"{server.url}/api/v1/runs/big/metrics?max_points=2000", requests // 2))
            | {"points_in_db": points},
            "live_1": asyncio.run(live_latency(server, 1, 100)),
            "live_200": asyncio.run(live_latency(server, 200 if not args.quick else 20, 60)),
        }
    finally:
        server.close()
    command = ".venv/bin/python bench/web.py" + (" --quick" if args.quick else "")
    path = write_result("web" if not args.quick else "web-quick", command, results)
    s = results
    heavy = ", ".join(s["startup"]["ml_libraries_imported"]) or "none imported"
    rows = [
        ("web start-up: import app.main", s["startup"]["import"], 1000, f"under 1 s, no ML library: {heavy}"),
        ("web start-up: process spawn to first page", s["startup"]["first_response"], 1000, "under 1 s"),
        (f"runs list API, {runs:,} runs", s["runs_api"], 50, "p95 under 50 ms"),
        (f"runs list page, {runs:,} runs", s["runs_page"], 50, "p95 under 50 ms"),
        (f"metrics for a chart, {points:,} points", s["metrics"], 100, "p95 under 100 ms"),
        ("live: worker log to SSE client, 1 viewer", s["live_1"], 100, "p95 under 100 ms"),
        (f"live: worker log to SSE client, {s['live_200']['viewers']} viewers", s["live_200"], 250, "p95 under 250 ms"),
    ]  # fmt: skip
    table = [
        "## Web and live events",
        "",
        f"`{command}` — recorded in `results/{path.name}`. "
        "Absolute figures on loopback (uvicorn, redis-server, SQLite).",
        "",
        "| what | p50 | p95 | target | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, figures, limit, target in rows:
        met = "yes" if figures["p95_ms"] < limit else f"no (p95 {figures['p95_ms'] / limit:.1f}x the target)"
        table.append(f"| {name} | {figures['p50_ms']} ms | {figures['p95_ms']} ms | {target} | {met} |")
    if not args.quick:
        update_readme_section("web", "\n".join(table))
    print("\n".join(table))


if __name__ == "__main__":
    main()
