"""Submit to first metric point: how long a user waits, after submitting a run, for its first point on the
chart, against a bare script's wait from its own start to its first logged step.

    .venv/bin/python bench/first_metric.py [--repeats 5]

loradeck's side goes through the real path, as in production: a uvicorn of the app and a Celery worker
(`python -m celery -A worker.runtime.celery_app worker -Q train,merge --pool solo`) already running and warm (it
has trained one run since it started, so torch, transformers and peft are imported, as in a long-lived
worker), a private redis-server and a scratch SQLite database. The clock starts just before
`POST /api/v1/runs` and stops at the first `metric` event of the run's Redis Stream (the stream id's
time: when Redis received it). The bare side (bench/bare.py) is a fresh process: its clock starts just
before the spawn and stops at its first logged step, so it pays Python's start, the imports of torch,
transformers and peft, tokenizing, loading and the first step. The two sides alternate (AB, BA, ...);
medians of the repeats. The first run of the worker after its start (imports included) is recorded as
the cold case, without a target.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import update_readme_section, write_result  # noqa: E402
from bench.throughput import SAMPLE, TINY, Scratch, alternate, spawn  # noqa: E402

TARGET = 1.5  # loradeck's wait over the bare script's, at most
METHODS = ("qlora", "lora")  # qlora is RunSpec's default


class Stack:
    """uvicorn and a Celery worker over a scratch data dir and its redis-server."""

    def __init__(self, scratch: Scratch) -> None:
        from app.processes import free_port

        self.scratch = scratch
        self.url = f"http://127.0.0.1:{free_port()}"
        self.worker_log = scratch.root / "worker.log"
        web = ["-m", "uvicorn", "app.main:app", "--port", self.url.rsplit(":", 1)[1], "--log-level", "warning"]
        worker = ["-m", "celery", "-A", "worker.runtime.celery_app", "worker", "-Q", "train,merge", "--pool", "solo"]
        worker += ["--loglevel", "INFO"]  # it says "ready." at INFO
        with self.worker_log.open("wb") as log:
            self.worker = subprocess.Popen([sys.executable, *worker], env=scratch.env, cwd=REPO, stdout=log, stderr=log)
        self.web = subprocess.Popen([sys.executable, *web], env=scratch.env, cwd=REPO)
        self.redis = redis.Redis.from_url(scratch.redis_url)
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while b" ready." not in self.worker_log.read_bytes():
            if self.worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Celery worker did not start:\n" + self.worker_log.read_text()[-3000:])
            time.sleep(0.1)
        while True:
            try:
                if httpx.get(self.url + "/api/v1/runs?limit=1", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the web app did not answer")
            time.sleep(0.1)

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        """POST the run, then follow its stream: seconds to the first metric, and the run's end status."""
        submitted = time.time()
        response = httpx.post(self.url + "/api/v1/runs", json=spec, timeout=30)
        response.raise_for_status()
        run_id = response.json()["id"]
        first: float | None = None
        cursor, key = "0-0", f"loradeck:run:{run_id}:events"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            reply: Any = self.redis.xread({key: cursor}, block=1000, count=100)
            for _key, entries in reply or []:
                for entry_id, fields in entries:
                    cursor = entry_id.decode()
                    event = fields[b"event"].decode()
                    if event == "metric" and first is None:
                        first = int(cursor.split("-")[0]) / 1000  # when Redis received it
                    if event == "done":
                        if first is None:
                            raise RuntimeError(f"run {run_id} ended without a metric: {fields}")
                        return {"seconds": first - submitted, "claimed_s": self._started_at(run_id) - submitted}
        raise RuntimeError(f"run {run_id} did not finish in time; see {self.worker_log}")

    def _started_at(self, run_id: str) -> float:
        """When the worker claimed the run (the database's started_at, stored in UTC)."""
        started = datetime.fromisoformat(httpx.get(f"{self.url}/api/v1/runs/{run_id}").json()["started_at"])
        return (started if started.tzinfo else started.replace(tzinfo=UTC)).timestamp()

    def close(self) -> None:
        for process in (self.web, self.worker):
            process.terminate()
        for process in (self.web, self.worker):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.redis.close()


def measure(stack: Stack, scratch: Scratch, method: str, repeats: int, *, cold: bool) -> dict[str, Any]:
    """Both sides for one method, alternating; `cold`: the worker's first run since its start is timed too."""
    from app.schemas import RunSpec

    spec = RunSpec.model_validate(
        {"method": method, "max_steps": 3, "save_steps": 0, "base_model": str(TINY), "dataset": str(SAMPLE)}
    ).model_dump(mode="json")
    runs: dict[str, list[float]] = {"loradeck": [], "bare": []}
    claims: list[float] = []
    # The worker's first run imports the ML libraries; a later method's first run still meets code paths
    # for the first time (bitsandbytes' kernels, say). Either way it is not a warm run.
    first = stack.submit(spec)["seconds"]
    print(f"{method} first run on this worker: {first:.2f} s", flush=True)

    def run(side: str, attempt: int) -> None:
        if side == "loradeck":
            submitted = stack.submit(spec)
            seconds = submitted["seconds"]
            claims.append(submitted["claimed_s"])
        else:
            figures = spawn("bare", spec, scratch.env, scratch.root / f"bare-{method}-{attempt}")
            seconds = figures["first_step_at"] - figures["spawned_at"]
        runs[side].append(seconds)
        print(f"{method} {side} #{attempt + 1}: {seconds:.2f} s", flush=True)

    alternate(repeats, run)
    ours, bare = statistics.median(runs["loradeck"]), statistics.median(runs["bare"])
    return {
        "spec": spec,
        "loradeck_s": ours,
        "bare_s": bare,
        "loradeck_submit_to_claim_s": statistics.median(claims),
        "ratio": ours / bare,
        "target": TARGET,
        "met": ours / bare <= TARGET,
        "runs": runs,
    } | ({"cold_worker_s": first} if cold else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each side per method")
    parser.add_argument("--quick", action="store_true", help="one repeat, QLoRA only: a smoke test of the script")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    scratch = Scratch(prefix="loradeck-first-metric-")
    results: dict[str, Any] = {}
    try:
        stack = Stack(scratch)
        try:
            for method in METHODS[:1] if args.quick else METHODS:
                results[method] = measure(stack, scratch, method, repeats, cold=not results)
        finally:
            stack.close()
    finally:
        scratch.close()

    command = ".venv/bin/python bench/first_metric.py" + (" --quick" if args.quick else f" --repeats {repeats}")
    name = "first_metric-quick" if args.quick else "first_metric"
    write_result(name, command, {"repeats": repeats, "target": TARGET, "methods": results})
    table = report(command, results)
    if not args.quick:
        update_readme_section("first_metric", table)
    print(table)


def report(command: str, results: dict[str, Any]) -> str:
    lines = [
        "## Submit to first metric point",
        "",
        f"`{command}` — recorded in `results/first_metric.json`. loradeck: `POST /api/v1/runs` to a running "
        "uvicorn, a warm Celery worker (`--pool solo`, one run trained since its start), until the first `metric` "
        "event reaches the run's Redis Stream. Bare script (`bench/bare.py`): a fresh process, from its spawn "
        "(Python start, imports, tokenizing, loading) to its first logged step. Tiny model, sample dataset, "
        "batch 8; the two sides alternate; medians.",
        "",
        "| what | bare script | loradeck | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method, r in results.items():
        met = "yes" if r["met"] else "no"
        lines.append(
            f"| {method}, submit to first metric | {r['bare_s']:.2f} s | {r['loradeck_s']:.2f} s | "
            f"{r['ratio']:.2f}x | ≤ {TARGET}x | {met} |"
        )
    lines += [
        "",
        "Of loradeck's wait, from the submit to the worker's claim of the run (web, queue, Celery): "
        + ", ".join(f"{m} {r['loradeck_submit_to_claim_s']:.2f} s" for m, r in results.items())
        + "; the rest is reading the spec, tokenizing, loading, adapting and the first step.",
    ]
    cold = [r for r in results.values() if "cold_worker_s" in r]
    if cold:
        lines += [
            "",
            f"A worker's first run after its start also imports torch, transformers and peft: "
            f"{cold[0]['cold_worker_s']:.2f} s from submit to first metric ({next(iter(results))}), no target.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
