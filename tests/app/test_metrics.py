"""Metric history for charts: all points when few, bucketed averages when many; the database keeps all."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select

from app.models import Metric, Run


@pytest.fixture
def client(loradeck_env: dict[str, str]) -> Iterator[TestClient]:
    from app.main import app

    with TestClient(app) as test_client:
        yield test_client


def _store(points: int) -> None:
    from app.db import get_sessionmaker

    with get_sessionmaker()() as session:
        session.add(Run(id="long", name="long", spec={}, status="succeeded"))
        session.flush()
        rows = [
            {"run_id": "long", "step": step, "kind": "train", "time": step / 10, "loss": float(step % 10)}
            for step in range(1, points + 1)
        ]
        rows += [
            {"run_id": "long", "step": s, "kind": "eval", "time": s / 10, "loss": 1.0}
            for s in range(500, points + 1, 500)
        ]
        session.execute(insert(Metric), rows)
        session.commit()


def test_short_history_comes_whole(client: TestClient) -> None:
    _store(50)
    points = client.get("/api/v1/runs/long/metrics", params={"max_points": 100}).json()
    assert [p["step"] for p in points if p["kind"] == "train"] == list(range(1, 51))
    assert client.get("/api/v1/runs/long/metrics", params={"after_step": 45}).json()[0]["step"] == 46


def test_long_history_is_bucketed_for_drawing_but_kept_whole(client: TestClient) -> None:
    _store(100_000)
    points = client.get("/api/v1/runs/long/metrics", params={"max_points": 1000}).json()
    train = [p for p in points if p["kind"] == "train"]
    evals = [p for p in points if p["kind"] == "eval"]
    assert len(train) == 1000 and len(evals) == 200
    # Each bucket of 100 consecutive steps holds losses 0..9 ten times: the average is 4.5.
    assert {p["loss"] for p in train} == {4.5}
    assert train[0]["step"] == 100 and train[-1]["step"] == 100_000
    assert [p["step"] for p in train] == sorted(p["step"] for p in train)
    from app.db import get_sessionmaker

    with get_sessionmaker()() as session:
        assert session.scalar(select(func.count()).select_from(Metric)) == 100_200
