"""The run page of a preference run: its objective's panels (read from app.objectives), its parameters, its
preference evaluation, and the links between a run and the runs continued from it; the compare page likewise."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import runs
from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR
from app.db import get_sessionmaker
from app.models import RunStatus
from app.objectives import objective
from app.schemas import RunSpec

PREFERENCE = {
    "base": {"rows": 20, "accuracy": 0.55, "margin": 0.125},
    "adapter": {"rows": 20, "accuracy": 0.9, "margin": 2.5},
}


@pytest.fixture
def client(loradeck_env: dict[str, str]) -> Iterator[TestClient]:
    from app.main import app

    with TestClient(app) as test_client:
        yield test_client


def _run(status: RunStatus = RunStatus.succeeded, evaluation: dict[str, Any] | None = None, **spec: Any) -> str:
    spec = {"base_model": str(TINY_MODEL_DIR), "dataset": str(SAMPLE_DATASET_DIR / "train.jsonl")} | spec
    with get_sessionmaker()() as session:
        run_id = runs.create_run(session=session, spec=RunSpec(**spec)).id
        if status != RunStatus.queued:
            runs.claim_run(session=session, run_id=run_id, worker="test:1")
        if RunStatus(status).finished:
            runs.finish_run(session=session, run_id=run_id, status=status)
        if evaluation:
            runs.record_evaluation(session=session, run_id=run_id, evaluation=evaluation)
    return run_id


def _panels(page: str) -> list[dict[str, Any]] | None:
    found = re.search(r'<script type="application/json" id="objective-panels">(.*?)</script>', page, re.S)
    return json.loads(html.unescape(found.group(1))) if found else None


def test_a_dpo_run_page_is_given_its_objectives_panels_and_series(client: TestClient) -> None:
    run_id = _run(objective="dpo", method="lora", name="pairs")
    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200
    panels = _panels(page.text)
    dpo = objective("dpo")
    assert panels is not None
    assert [p["key"] for p in panels] == [p.key for p in dpo.panels]
    drawn = {(s["key"], s["label"], p["key"]) for p in panels for s in p["series"]}
    assert drawn == {(s.key, s.label, s.panel) for s in dpo.series}
    for panel in panels:  # each panel has its card and chart on the page
        assert f'id="panel-{panel["key"]}-chart"' in page.text
        assert panel["title"] in page.text


def test_a_kto_run_draws_only_its_own_panels(client: TestClient) -> None:
    run_id = _run(objective="kto", method="lora")
    panels = _panels(client.get(f"/runs/{run_id}").text)
    assert panels is not None
    assert [p["key"] for p in panels] == [p.key for p in objective("kto").panels] == ["rewards", "logps"]
    assert "kl" in {s["key"] for p in panels for s in p["series"]}


def test_an_sft_run_page_has_no_objective_panels(client: TestClient) -> None:
    page = client.get(f"/runs/{_run(method='lora')}").text
    assert _panels(page) is None
    assert 'id="panel-rewards-chart"' not in page


def test_the_parameters_panel_shows_the_objective_and_its_own_fields(client: TestClient) -> None:
    page = client.get(f"/runs/{_run(objective='dpo', method='lora', beta=0.25, loss_type='ipo')}").text
    params = page[page.index('id="params"') :]
    params = params[: params.index("</dl>")]
    assert "Preference (DPO)" in params
    assert re.search(r"<dt>beta</dt>\s*<dd[^>]*>0.25</dd>", params)
    assert re.search(r"<dt>loss_type</dt>\s*<dd[^>]*>ipo</dd>", params)
    assert "desirable_weight" not in params  # KTO's, not DPO's
    sft = client.get(f"/runs/{_run(method='lora')}").text
    sft_params = sft[sft.index('id="params"') :]
    assert "Supervised" in sft_params[: sft_params.index("</dl>")] and "beta" not in sft_params[:400]


def test_a_continued_run_links_to_its_start_and_the_start_to_it(client: TestClient) -> None:
    start = _run(method="lora", name="sft-first")
    other = _run(method="lora", name="unrelated")
    continued = [_run(objective="dpo", method="lora", init_from_run=start, name=f"dpo-{n}") for n in (1, 2)]

    page = client.get(f"/runs/{continued[0]}").text
    link = re.search(r'id="continued-from">(.*?)</', page, re.S)
    assert link and f'href="/runs/{start}"' in page[page.index('id="continued-from"') - 200 :][:600]
    assert "sft-first" in link.group(0) or "sft-first" in page[page.index('id="continued-from"') :][:400]

    start_page = client.get(f"/runs/{start}").text
    by = start_page[start_page.index('id="continued-by"') :][:1000]
    for run_id, name in zip(continued, ("dpo-1", "dpo-2"), strict=True):
        assert f'href="/runs/{run_id}"' in by and name in by
    assert other not in by
    assert 'id="continued-by"' not in client.get(f"/runs/{other}").text
    assert 'id="continued-from"' not in start_page


def test_continued_by_is_one_query_on_the_spec_column(loradeck_env: dict[str, str]) -> None:
    # The JSON column is read by the database (SQLite's json_extract, PostgreSQL's ->>), not in Python.
    from app.services.runs import continuations

    start = _run(method="lora")
    child = _run(objective="dpo", method="lora", init_from_run=start)
    _run(method="lora")
    with get_sessionmaker()() as session:
        source, children = continuations(session=session, run=runs.get_run(session=session, run_id=child))
        assert source is not None and source.id == start and children == []
        source, children = continuations(session=session, run=runs.get_run(session=session, run_id=start))
        assert source is None and [c.id for c in children] == [child]


def test_a_run_continued_from_a_deleted_run_names_its_id(client: TestClient) -> None:
    child = _run(objective="dpo", method="lora", init_from_run="gone0123456789")
    page = client.get(f"/runs/{child}").text
    assert "gone0123456789" in page[page.index('id="continued-from"') :][:300]


@pytest.mark.parametrize("status", [RunStatus.succeeded, RunStatus.stopped])
def test_a_finished_run_with_an_adapter_offers_to_continue_from_it(client: TestClient, status: RunStatus) -> None:
    run_id = _run(status, method="lora")
    page = client.get(f"/runs/{run_id}/actions").text
    assert f'href="/runs/new?init_from_run={run_id}&amp;objective=dpo"' in page
    assert "Continue from this run" in page


@pytest.mark.parametrize("status", [RunStatus.queued, RunStatus.running, RunStatus.failed, RunStatus.cancelled])
def test_a_run_without_a_final_adapter_offers_no_continuation(client: TestClient, status: RunStatus) -> None:
    page = client.get(f"/runs/{_run(status, method='lora')}").text
    assert "init_from_run=" not in page


def test_the_preference_evaluation_shows_base_beside_adapter(client: TestClient) -> None:
    run_id = _run(objective="dpo", method="lora", evaluation={"task_skipped": "no answers", "preference": PREFERENCE})
    page = client.get(f"/runs/{run_id}/evaluation").text
    table = page[page.index('id="preference-metrics"') :]
    table = table[: table.index("</table>")]
    assert '<th data-side="base">base</th>' in table
    assert re.search(r"preference accuracy</th>\s*<td[^>]*>55.0%</td>\s*<td[^>]*>90.0%</td>", table)
    assert re.search(r"mean margin</th>\s*<td[^>]*>0.125</td>\s*<td[^>]*>2.500</td>", table)
    assert ">20<" in table


def test_a_continued_runs_preference_evaluation_names_the_starting_run(client: TestClient) -> None:
    start = _run(method="lora")
    evaluation = {"task_skipped": "no answers", "preference": PREFERENCE}
    run_id = _run(objective="dpo", method="lora", init_from_run=start, evaluation=evaluation)
    table = client.get(f"/runs/{run_id}/evaluation").text
    assert '<th data-side="base">starting run</th>' in table[table.index('id="preference-metrics"') :]


def test_compare_offers_the_named_series_and_the_preference_figures(client: TestClient) -> None:
    dpo = _run(objective="dpo", method="lora", evaluation={"task_skipped": "none", "preference": PREFERENCE})
    sft = _run(method="lora")
    page = client.get(f"/compare?runs={dpo},{sft}").text
    picker = page[page.index('id="compare-value"') :]
    options = re.findall(r'<option value="([^"]+)"', picker[: picker.index("</select>")])
    assert options == [s.key for s in objective("dpo").series]  # the objective's named values, to overlay
    assert 'id="compare-values-chart"' in page
    row = page[page.index(f'<tr data-run-id="{dpo}"') :]
    assert "90.0%" in row[: row.index("</tr>")] and "base 55.0%" in row[: row.index("</tr>")]
    only_sft = client.get(f"/compare?runs={sft}").text
    assert 'id="compare-values-chart"' not in only_sft and 'id="preference-accuracy"' not in only_sft
