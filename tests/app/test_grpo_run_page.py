"""A GRPO run as the web shows it, built the worker's way without training: its sampled completions (the run
folder's samples.jsonl, one SamplesEvent's data a line) through `GET /api/v1/runs/{id}/samples`, newest last and
bounded; its run page's samples card and reward panels; its evaluation (mean reward, base or starting run beside
the adapter); and the compare page's held-out mean reward."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import runs
from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR, get_settings
from app.contracts.events import SampledCompletion, SamplesEvent
from app.db import get_sessionmaker
from app.models import RunStatus
from app.objectives import objective
from app.rundir import RunDir
from app.schemas import RunSpec
from app.services.samples import read_latest
from tests.app.test_run_page_objective import _run

REWARD = {
    "base": {"rows": 40, "greedy": 0.79, "sampled": 0.7125, "functions": {"json_fields": 0.79, "exact": 0.125}},
    "adapter": {"rows": 40, "greedy": 0.915, "sampled": 0.8, "functions": {"json_fields": 0.9, "exact": 0.25}},
}


@pytest.fixture
def client(loradeck_env: dict[str, str]) -> Iterator[TestClient]:
    from app.main import app

    with TestClient(app) as test_client:
        yield test_client


def grpo_run(status: RunStatus = RunStatus.running, evaluation: dict[str, Any] | None = None, **spec: Any) -> str:
    """A GRPO run's row as a worker leaves it (trained with LoRA on the SFT sample), in `status`."""
    return _run(status, evaluation, **{"objective": "grpo", "method": "lora"} | spec)


def sample(step: int, text: str = '{"city": "臺北市"}') -> SamplesEvent:
    completions = [
        SampledCompletion(text=text, reward=1.5, rewards={"json_fields": 1.0, "exact": 0.5}),
        SampledCompletion(text="not json", reward=0.0, rewards={"json_fields": 0.0, "exact": 0.0}),
    ]
    reference = '{"city": "臺北市"}'
    return SamplesEvent(step=step, prompt=f"prompt of step {step}", reference=reference, completions=completions)


def write_samples(run_id: str, steps: range, tail: str = "") -> Path:
    """The samples file as the worker appends it: each event's data a line; `tail`, a line it is still writing."""
    path = RunDir.of(run_id, get_settings()).samples_file
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(sample(step).data(), ensure_ascii=False) + "\n" for step in steps]
    path.write_text("".join(lines) + tail, encoding="utf-8")
    return path


def test_the_samples_api_answers_the_newest_events_oldest_first(client: TestClient) -> None:
    run_id = grpo_run()
    assert client.get(f"/api/v1/runs/{run_id}/samples").json() == {"samples": []}  # none sampled yet
    write_samples(run_id, range(5, 155, 5), tail='{"step": 155, "prompt": "half writ')
    answer = client.get(f"/api/v1/runs/{run_id}/samples?limit=3")
    assert answer.status_code == 200
    found = answer.json()["samples"]
    assert [s["step"] for s in found] == [140, 145, 150]  # the partial line of step 155 is passed over
    assert found[-1]["prompt"] == "prompt of step 150" and found[-1]["reference"] == '{"city": "臺北市"}'
    assert found[-1]["completions"][0] == {
        "text": '{"city": "臺北市"}',
        "reward": 1.5,
        "rewards": {"json_fields": 1.0, "exact": 0.5},
    }
    assert [s["step"] for s in client.get(f"/api/v1/runs/{run_id}/samples").json()["samples"]] == list(
        range(55, 155, 5)
    )  # 20 by default
    for limit in ("0", "101", "x"):
        refused = client.get(f"/api/v1/runs/{run_id}/samples?limit={limit}")
        assert refused.status_code == 422 and "limit" in refused.text
    missing = client.get("/api/v1/runs/nosuchrun000/samples")
    assert missing.status_code == 404 and "nosuchrun000" in missing.text


def test_reading_samples_is_bounded_from_the_files_end(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    huge = sample(1, text="x" * 300_000)
    lines = [huge.data()] + [sample(step).data() for step in range(2, 6)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "{broken\n", encoding="utf-8")
    # Within a 64 KiB bound the huge first event is out of reach; the four after it are read.
    assert [e.step for e in read_latest(path, limit=10, max_bytes=64 * 1024)] == [2, 3, 4, 5]
    assert [e.step for e in read_latest(path, limit=10)] == [1, 2, 3, 4, 5]
    assert [e.step for e in read_latest(path, limit=2)] == [4, 5]
    assert read_latest(tmp_path / "none.jsonl", limit=5) == []


def test_the_samples_api_is_behind_the_login_and_host_checks(
    loradeck_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.web.security import hash_password, new_api_token

    run_id = grpo_run()
    write_samples(run_id, range(1, 3))
    token, digest = new_api_token()
    monkeypatch.setenv("LORADECK_HOST", "0.0.0.0")
    monkeypatch.setenv("LORADECK_ADMIN_PASSWORD_HASH", hash_password("a long admin password"))
    monkeypatch.setenv("LORADECK_API_TOKEN_HASHES", digest)
    get_settings.cache_clear()
    from app.main import app

    try:
        with TestClient(app) as client:
            path = f"/api/v1/runs/{run_id}/samples"
            assert client.get(path).status_code == 401
            assert client.get(path, headers={"Authorization": "Bearer ld_wrong"}).status_code == 401
            foreign = client.get(path, headers={"Authorization": f"Bearer {token}", "Host": "evil.example"})
            assert foreign.status_code == 400
            allowed = client.get(path, headers={"Authorization": f"Bearer {token}"})
            assert allowed.status_code == 200 and [s["step"] for s in allowed.json()["samples"]] == [1, 2]
    finally:
        get_settings.cache_clear()


def test_a_grpo_run_page_has_its_panels_its_samples_card_and_its_rewards(client: TestClient) -> None:
    run_id = grpo_run(rewards=[{"function": "regex", "pattern": r"^\{.*\}$"}, {"function": "exact", "weight": 2}])
    page = client.get(f"/runs/{run_id}").text
    found = re.search(r'<script type="application/json" id="objective-panels">(.*?)</script>', page, re.S)
    assert found
    panels = json.loads(html.unescape(found.group(1)))
    assert [p["key"] for p in panels] == ["reward", "reward_functions", "lengths", "kl", "clipping"]
    assert {s["key"] for p in panels for s in p["series"]} == {s.key for s in objective("grpo").series}
    assert 'id="samples-card"' in page and "Sampled completions" in page and "/static/js/samples.js" in page
    params = page[page.index('id="params"') :]
    assert re.search(r'<dd data-field="rewards">regex ×1.0 <code>\^\\\{\.\*\\\}\$</code>, exact ×2.0</dd>', params)
    with get_sessionmaker()() as session:
        spec = RunSpec(base_model=str(TINY_MODEL_DIR), dataset=str(SAMPLE_DATASET_DIR / "train.jsonl"), method="lora")
        plain = runs.create_run(session=session, spec=spec).id
    assert 'id="samples-card"' not in client.get(f"/runs/{plain}").text


def test_the_evaluation_shows_the_mean_reward_of_the_start_beside_the_adapter(client: TestClient) -> None:
    start = grpo_run(RunStatus.succeeded, objective="sft", name="sft first")
    run_id = grpo_run(
        RunStatus.succeeded, {"task_skipped": "no answers", "reward": REWARD}, init_from_run=start, temperature=0.8
    )
    card = client.get(f"/runs/{run_id}/evaluation").text
    table = card[card.index('id="reward-metrics"') :]
    table = table[: table.index("</table>")]
    assert re.search(r'<th data-side="base">starting run</th><th>adapter</th>', table)
    cells = dict(re.findall(r'<tr data-(?:figure|function)="([a-z_]+)">.*?<td data-side="base">([^<]*)</td>', table))
    assert cells == {"greedy": "0.790", "sampled": "0.713", "json_fields": "0.790", "exact": "0.125"}
    assert "mean reward (sampled at 0.8)" in table and '<td data-side="adapter">0.915</td>' in table
    assert '<td colspan="2">40</td>' in table
    skipped = grpo_run(RunStatus.succeeded, {"task_skipped": "no answers", "reward_skipped": "no eval prompts"})
    assert "No reward scores: no eval prompts." in client.get(f"/runs/{skipped}/evaluation").text

    compared = client.get(f"/compare?runs={run_id},{skipped}").text
    assert 'id="mean-reward"' in compared
    rows = dict(re.findall(r'<tr data-run-id="([^"]+)">.*?<td class="mean-reward">(.*?)</td>', compared, re.S))
    assert rows[run_id] == '0.915 <span class="muted">(starting run 0.790)</span>' and rows[skipped] == "–"


def test_a_finished_run_offers_to_continue_with_grpo(client: TestClient) -> None:
    start = grpo_run(RunStatus.succeeded, objective="sft")
    actions = client.get(f"/runs/{start}/actions").text
    assert f'href="/runs/new?init_from_run={start}&amp;objective=grpo" id="continue-grpo"' in actions
    form = client.get(f"/runs/new?init_from_run={start}&objective=grpo").text
    assert re.search(r'<option value="grpo" selected', form)
    assert re.search(rf'<input id="f-init_from_run" name="init_from_run" type="text" value="{start}"', form)
    assert re.search(r'<option value="dapo" selected', form)
    assert 'id="continue-grpo"' not in client.get(f"/runs/{grpo_run()}/actions").text  # still training
