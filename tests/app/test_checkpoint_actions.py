"""A cancelled run's checkpoints, through the real stack: one becomes the run's adapter (then merge and the
downloads work on it), or the run resumes from one and trains on to success."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Stack, wait_for

pytestmark = pytest.mark.slow

# Trains until it is cancelled: the test cancels it once its first checkpoints are on disk.
ENDLESS = {"method": "lora", "quantization": "none", "max_steps": 100_000, "save_steps": 5, "learning_rate": 2e-3}


def cancelled_with_checkpoints(
    stack: Stack, client: httpx.Client, name: str, after_step: int, **spec: Any
) -> dict[str, Any]:
    """A run cancelled once it has trained past `after_step` (its checkpoints saved every 5 steps)."""
    run = stack.start_run(name=name, **ENDLESS | spec)
    stack.wait_run(run["id"], lambda r: r["status"] == "running" and r["step"] > after_step)
    # Before the cancel, neither action is taken: the run still trains.
    refused = client.post(f"/api/v1/runs/{run['id']}/checkpoints/5/use-as-adapter")
    assert refused.status_code == 409 and "cancel or stop it first" in refused.json()["detail"]
    assert client.post(f"/api/v1/runs/{run['id']}/cancel").status_code == 200
    cancelled = stack.wait_run(run["id"])
    assert cancelled["status"] == "cancelled", cancelled["error"]
    return cancelled


def complete_steps(stack: Stack, run_id: str) -> list[int]:
    listed = httpx.get(f"{stack.url}/api/v1/runs/{run_id}/checkpoints", timeout=30).json()
    return [c["step"] for c in listed if c["complete"]]


def untar(response: httpx.Response, into: Path) -> Path:
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        archive.extractall(into, filter="data")
    (top,) = list(into.iterdir())
    return top


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_checkpoint_becomes_the_adapter_and_merges(stack: Stack, tmp_path: Path) -> None:
    with stack.client() as client:
        run = cancelled_with_checkpoints(stack, client, "use a checkpoint", after_step=5)
        run_id = run["id"]
        steps = complete_steps(stack, run_id)
        assert steps and steps[-1] <= run["step"], steps
        newest = steps[-1]
        # The dead end as it was: no adapter, and merge refused.
        assert client.get(f"/api/v1/runs/{run_id}/artifacts").json() == []
        assert client.post(f"/api/v1/runs/{run_id}/merge").status_code == 409
        # Bad requests name what to fix and change nothing.
        missing = client.post(f"/api/v1/runs/{run_id}/checkpoints/3/use-as-adapter")
        assert missing.status_code == 404 and f"it has: {', '.join(map(str, steps))}" in missing.json()["detail"]
        assert client.post(f"/api/v1/runs/{run_id}/checkpoints/0/use-as-adapter").status_code == 422
        assert client.get(f"/api/v1/runs/{run_id}/artifacts").json() == []

        answer = client.post(f"/api/v1/runs/{run_id}/checkpoints/{newest}/use-as-adapter")
        assert answer.status_code == 201, answer.text
        adapter = answer.json()
        assert adapter["kind"] == "adapter" and adapter["status"] == "ready"
        assert adapter["details"]["checkpoint_step"] == newest
        # The run is still what it was: cancelled; its checkpoint stays.
        assert client.get(f"/api/v1/runs/{run_id}").json()["status"] == "cancelled"
        assert newest in complete_steps(stack, run_id)

        # The adapter's download is the checkpoint's adapter, and nothing of Trainer's state.
        downloaded = untar(client.get(adapter["download_url"]), tmp_path / "adapter")
        checkpoint = stack.data_dir / "runs" / run_id / "checkpoints" / f"checkpoint-{newest}"
        assert sorted(p.name for p in downloaded.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
        weights = "adapter_model.safetensors"
        assert sha256(downloaded / weights) == sha256(checkpoint / weights)

        # The run page says where the adapter comes from.
        page = client.get(f"/runs/{run_id}").text
        assert f"checkpoint-{newest}</code>: the adapter of step {newest}" in page

        # The playground offers it.
        asked = client.post("/api/v1/playground", json={"run_id": run_id, "prompt": "hi", "compare": "adapter"})
        assert asked.status_code == 202, asked.text

        # Merge works on it: checked against adapter-on-base, and downloaded.
        assert client.post(f"/api/v1/runs/{run_id}/merge").status_code == 202
        merged = wait_for(
            lambda: next(
                (a for a in client.get(f"/api/v1/runs/{run_id}/artifacts").json()
                 if a["kind"] == "merged" and a["status"] in ("ready", "failed")),
                None,
            ),
            timeout=240,
            what="the merge",
            every=0.3,
        )  # fmt: skip
        assert merged["status"] == "ready", merged["error"]
        assert merged["details"]["base_diff"] > 0
        merged_dir = untar(client.get(merged["download_url"]), tmp_path / "merged")
        names = {p.name for p in merged_dir.iterdir()}
        assert {"config.json", "README.md", "SHA256SUMS"} <= names
        assert any(name.endswith(".safetensors") for name in names), names


def test_a_cancelled_run_resumes_from_a_checkpoint_and_succeeds(stack: Stack) -> None:
    with stack.client() as client:
        # Every checkpoint kept: the cancel may land a few steps past 10.
        run = cancelled_with_checkpoints(stack, client, "resume me", after_step=10, save_total_limit=100)
        run_id = run["id"]
        steps = complete_steps(stack, run_id)
        assert 5 in steps and steps[-1] >= 10, steps
        before = {m["step"]: m for m in client.get(f"/api/v1/runs/{run_id}/metrics").json() if m["kind"] == "train"}
        too_short = client.post(f"/api/v1/runs/{run_id}/checkpoints/5/resume", json={"max_steps": 5})
        assert too_short.status_code == 422 and "max_steps" in too_short.text

        # From the older checkpoint, to step 20 (the spec said 100000): the later checkpoints are trained again.
        answer = client.post(f"/api/v1/runs/{run_id}/checkpoints/5/resume", json={"max_steps": 20})
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "queued" and answer.json()["max_steps"] == 20
        done = stack.wait_run(run_id)

    assert done["status"] == "succeeded", done["error"]
    assert done["step"] == 20 and done["spec"]["max_steps"] == 20
    metrics = httpx.get(f"{stack.url}/api/v1/runs/{run_id}/metrics", timeout=30).json()
    train = [m for m in metrics if m["kind"] == "train"]
    assert [m["step"] for m in train] == list(range(1, 21))
    # Steps 1-5 are the first attempt's, kept; from 6 on it trained on from the checkpoint, its clock going on.
    assert [m["time"] for m in train[:5]] == [before[step]["time"] for step in range(1, 6)]
    assert train[5]["time"] > train[4]["time"] and train[5]["tokens_seen"] > train[4]["tokens_seen"]
    log = httpx.get(f"{stack.url}/api/v1/runs/{run_id}/log", params={"lines": 5000}, timeout=30).json()["lines"]
    assert any("resuming from" in line and "checkpoint-5" in line for line in log), log[-20:]
    artifacts = httpx.get(f"{stack.url}/api/v1/runs/{run_id}/artifacts", timeout=30).json()
    adapter = next(a for a in artifacts if a["kind"] == "adapter")
    assert adapter["status"] == "ready" and "checkpoint_step" not in adapter["details"]
    # Resumed once more? A succeeded run has trained all its steps.
    again = httpx.post(f"{stack.url}/api/v1/runs/{run_id}/checkpoints/20/resume", timeout=30)
    assert again.status_code == 409 and "duplicate it" in again.json()["detail"]
