"""The JSON API and the form, in process, against a real Redis and a migrated SQLite database."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from markupsafe import escape

from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR
from app.schemas import RunSpec


@pytest.fixture
def client(loradeck_env: dict[str, str]) -> Iterator[TestClient]:
    from app.main import app

    with TestClient(app) as test_client:
        yield test_client


def _queued_task_names(redis_url: str) -> list[str]:
    """What Celery's Redis transport holds in the `train` and `merge` queues."""
    client = redis.Redis.from_url(redis_url)
    names = []
    for queue in ("train", "merge"):
        for raw in client.lrange(queue, 0, -1):
            message = json.loads(raw)
            names.append(f"{queue}:{message['headers']['task']}:{message['headers']['argsrepr']}")
    return names


def test_healthz_reports_database_and_redis(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"web": "ok", "database": "ok", "redis": "ok"}


def test_create_run_stores_it_and_queues_training(client: TestClient, loradeck_env: dict[str, str]) -> None:
    response = client.post("/api/v1/runs", json={"name": "first", "max_steps": 5})
    assert response.status_code == 201
    run = response.json()
    assert run["status"] == "queued"
    assert run["spec"]["method"] == "qlora"
    assert run["spec"]["base_model"] == str(TINY_MODEL_DIR)
    assert run["spec"]["dataset"] == str(SAMPLE_DATASET_DIR / "train.jsonl")
    assert _queued_task_names(loradeck_env["REDIS_URL"]) == [f"train:loradeck.train_run:['{run['id']}']"]
    assert client.get(f"/api/v1/runs/{run['id']}").json()["name"] == "first"
    assert [r["id"] for r in client.get("/api/v1/runs").json()] == [run["id"]]
    assert client.get("/api/v1/runs", params={"status": "running"}).json() == []


def test_bad_spec_is_refused_naming_each_field_and_nothing_is_stored(client: TestClient) -> None:
    response = client.post(
        "/api/v1/runs",
        json={
            "r": 0,
            "base_model": "no such model",
            "dataset": "assets/nowhere.jsonl",
            "target_modules": "q_proj;x",
        },
    )
    assert response.status_code == 422
    problems = {tuple(error["loc"][1:]): error["msg"] for error in response.json()["detail"]}
    assert set(problems) == {("r",), ("base_model",), ("dataset",), ("target_modules",)}
    assert "no such model is neither a local model directory nor a hub id" in problems[("base_model",)]
    assert "no file at assets/nowhere.jsonl" in problems[("dataset",)]
    assert client.get("/api/v1/runs").json() == []


def test_unknown_spec_field_is_refused(client: TestClient) -> None:
    response = client.post("/api/v1/runs", json={"lora_rank": 8})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "lora_rank"]


def test_cancel_a_queued_run_and_not_twice(client: TestClient) -> None:
    run = client.post("/api/v1/runs", json={"max_steps": 5}).json()
    response = client.post(f"/api/v1/runs/{run['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    again = client.post(f"/api/v1/runs/{run['id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]


def test_merge_is_refused_until_the_run_succeeded(client: TestClient) -> None:
    run = client.post("/api/v1/runs", json={"max_steps": 5}).json()
    response = client.post(f"/api/v1/runs/{run['id']}/merge")
    assert response.status_code == 409
    assert "a run is merged once its adapter is saved" in response.json()["detail"]


def test_unknown_ids_are_404(client: TestClient) -> None:
    assert client.get("/api/v1/runs/nope").status_code == 404
    assert client.get("/api/v1/runs/nope/metrics").status_code == 404
    assert client.get("/api/v1/artifacts/nope/download").status_code == 404


def test_form_shows_every_runspec_field_with_its_help(client: TestClient) -> None:
    page = client.get("/runs/new").text
    for name, info in RunSpec.model_fields.items():
        assert f'name="{name}"' in page, name
        assert str(escape(info.description or "")) in page, name
    assert '<option value="qlora" selected' in page


def test_form_error_keeps_what_the_user_typed(client: TestClient) -> None:
    response = client.post(
        "/runs",
        data={"name": "my run", "r": "sixteen", "learning_rate": "3e-4", "target_modules": "q_proj, v_proj"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 422
    page = response.text
    assert 'data-field="r">Input should be a valid integer' in page
    assert 'value="my run"' in page and 'value="sixteen"' in page and 'value="3e-4"' in page
    assert 'value="q_proj, v_proj"' in page
    assert client.get("/api/v1/runs").json() == []


def test_form_submission_opens_the_run_page(client: TestClient) -> None:
    response = client.post(
        "/runs", data={"name": "from form", "max_steps": "7", "method": "lora"}, follow_redirects=False
    )
    assert response.status_code == 303
    run_page = client.get(response.headers["location"])
    assert run_page.status_code == 200 and "from form" in run_page.text
    run = client.get("/api/v1/runs").json()[0]
    assert run["spec"]["method"] == "lora" and run["spec"]["max_steps"] == 7
    htmx = client.post("/runs", data={"name": "via htmx"}, headers={"HX-Request": "true"})
    assert htmx.status_code == 204 and htmx.headers["HX-Redirect"].startswith("/runs/")


SAMPLE_TRAIN, SAMPLE_EVAL = SAMPLE_DATASET_DIR / "train.jsonl", SAMPLE_DATASET_DIR / "eval.jsonl"


@pytest.mark.slow
def test_a_run_created_with_no_fields_is_scored_on_the_samples_eval_file(client: TestClient) -> None:
    from worker.engine.train import run_training

    run = client.post("/api/v1/runs", json={}).json()
    assert run["spec"]["dataset"] == str(SAMPLE_TRAIN)
    assert run["spec"]["eval_dataset"] == str(SAMPLE_EVAL)
    run_training(run["id"])  # the worker's own code, in this process
    finished = client.get(f"/api/v1/runs/{run['id']}").json()
    assert finished["status"] == "succeeded", finished["error"]
    task = finished["evaluation"]["task"]
    assert task["base"]["rows"] == task["adapter"]["rows"] == run["spec"]["task_eval_rows"] == 50


def test_saying_anything_of_evaluation_is_kept_as_said(client: TestClient) -> None:
    # Saying something about evaluation is kept as said, even "none".
    none = client.post("/api/v1/runs", json={"eval_dataset": ""}).json()
    assert none["spec"]["eval_dataset"] == "" and none["spec"]["eval_split"] == 0
    split = client.post("/api/v1/runs", json={"eval_split": 0.2}).json()
    assert split["spec"]["eval_dataset"] == "" and split["spec"]["eval_split"] == 0.2


def test_an_eval_file_of_another_row_shape_is_refused_naming_both_files(client: TestClient, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("shapes")
    chats = folder / "chats.jsonl"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    chats.write_text(json.dumps({"messages": turns}) + "\n", encoding="utf-8")
    before = client.get("/api/v1/runs").json()
    response = client.post("/api/v1/runs", json={"eval_dataset": str(chats)})
    assert response.status_code == 422
    message = json.dumps(response.json())
    assert "chats.jsonl" in message and "train.jsonl" in message
    assert "messages rows" in message and "prompt/completion rows" in message
    assert client.get("/api/v1/runs").json() == before
    # The same file as training data with an eval file of its own shape is fine.
    ok = client.post("/api/v1/runs", json={"dataset": str(chats), "eval_dataset": str(chats)})
    assert ok.status_code == 201, ok.text


def _field_value(page: str, name: str) -> str:
    found = re.search(rf'id="f-{name}"[^>]*value="([^"]*)"', page)
    assert found, name
    return found.group(1)


def test_the_form_proposes_eval_data_that_goes_with_its_dataset(client: TestClient, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/runs/new").text
    assert _field_value(page, "eval_dataset") == escape(str(SAMPLE_EVAL))
    assert _field_value(page, "eval_split") == "0.0"
    upload = tmp_path_factory.mktemp("uploads") / "mine.jsonl"
    upload.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n", encoding="utf-8")
    # From "Use in a new run": the sample's eval file is never left behind for another dataset.
    page = client.get("/runs/new", params={"dataset": str(upload)}).text
    assert _field_value(page, "dataset") == escape(str(upload))
    assert _field_value(page, "eval_dataset") == ""
    assert _field_value(page, "eval_split") == "0.1"


def test_the_api_documents_what_a_run_s_evaluation_holds(client: TestClient) -> None:
    schemas = client.get("/api/v1/openapi.json").json()["components"]["schemas"]
    evaluation = schemas["RunOut"]["properties"]["evaluation"]
    assert {"$ref": "#/components/schemas/Evaluation"} in evaluation["anyOf"]
    assert {"base", "task", "examples", "regression", "error", "progress"} <= set(schemas["Evaluation"]["properties"])
    assert set(schemas["TaskScore"]["required"]) == {"rows", "exact_match"}
