"""Findings of an audit over HTTP, against the whole stack (uvicorn and real Celery workers): a hub id is never
read as a local path, a run deleted while its task waited ends quietly, and a downloaded adapter names its base
without this server's paths. No process logs a traceback for any of it.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import httpx

from tests.conftest import Stack, wait_for

# The network is none of these tests' business: a hub id is looked up in the Hugging Face cache only.
STACK_ENV = {"HF_HUB_OFFLINE": "1"}
# Folders outside the model roots that exist in the workers' working directory, and an id that exists nowhere.
RELATIVE_FOLDERS = ("app/static", "tests/worker", "worker/data")
NOWHERE = "nonexist/zzzz"


def test_a_two_part_name_is_a_hub_id_and_never_opens_a_folder_beside_the_worker(stack: Stack) -> None:
    answers = {}
    for name in (*RELATIVE_FOLDERS, NOWHERE):
        response = httpx.post(f"{stack.url}/api/v1/estimate", json={"base_model": name}, timeout=60)
        answers[name] = f"{response.status_code} {json.dumps(response.json()).replace(name, 'NAME')}"
    # The same answer for a folder that exists as for one that does not: nothing tells them apart.
    assert set(answers.values()) == {answers[NOWHERE]}, answers
    assert answers[NOWHERE].startswith("400 ") and "Hugging Face cache" in answers[NOWHERE]

    run = stack.start_run(base_model="tests/worker", max_steps=2)
    ended = stack.wait_run(run["id"])
    assert ended["status"] == "failed"
    assert "base_model: tests/worker not found" in ended["error"]


def test_a_run_deleted_while_its_task_waits_ends_quietly_when_the_task_comes(stack: Stack) -> None:
    busy = stack.start_run(max_steps=400)
    stack.wait_run(busy["id"], until=lambda run: run["status"] == "running", timeout=120)
    waiting = stack.start_run(max_steps=2)  # queued behind the busy run: one trainer
    with stack.client() as client:
        assert client.post(f"/api/v1/runs/{waiting['id']}/cancel").json()["status"] == "cancelled"
        assert client.delete(f"/api/v1/runs/{waiting['id']}").status_code == 204
        client.post(f"/api/v1/runs/{busy['id']}/cancel")
    stack.wait_run(busy["id"])
    wait_for(
        lambda: "deleted while its task waited" in stack.worker_log.read_text(),
        60,
        "the trainer to take the deleted run's task",
    )
    time.sleep(1)
    log = stack.worker_log.read_text()
    assert f"run {waiting['id']}: no run with id {waiting['id']}" in log
    assert "Traceback" not in log


def test_a_downloaded_adapter_names_its_base_by_folder_not_by_this_servers_path(stack: Stack) -> None:
    run = stack.wait_run(stack.start_run(max_steps=2, save_steps=1)["id"])
    assert run["status"] == "succeeded", run["error"]
    with stack.client() as client:
        adapter = next(a for a in client.get(f"/api/v1/runs/{run['id']}/artifacts").json() if a["kind"] == "adapter")
        body = client.get(f"/api/v1/artifacts/{adapter['id']}/download").content
    with tarfile.open(fileobj=io.BytesIO(body)) as archive:
        texts = {
            Path(member.name).name: archive.extractfile(member).read().decode()  # type: ignore[union-attr]
            for member in archive
            if member.name.endswith((".md", ".json"))
        }
    assert json.loads(texts["adapter_config.json"])["base_model_name_or_path"] == "tiny-llama"
    assert "base_model: tiny-llama" in texts["README.md"]
    where = str(stack.data_dir.parents[1])  # the test's temporary folders, and so the models' and the runs'
    assert [name for name, text in texts.items() if where in text or str(Path.cwd()) in text] == []
    # A checkpoint, which the run page offers for download too, names it so.
    checkpoint = stack.data_dir / "runs" / run["id"] / "checkpoints" / "checkpoint-1"
    for name in ("adapter_config.json", "README.md"):
        text = (checkpoint / name).read_text()
        assert where not in text and str(Path.cwd()) not in text and "tiny-llama" in text
    assert "Traceback" not in stack.worker_log.read_text()
