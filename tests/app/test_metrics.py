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


def test_long_history_is_sampled_for_drawing_but_kept_whole(client: TestClient) -> None:
    _store(100_000)
    points = client.get("/api/v1/runs/long/metrics", params={"max_points": 1000}).json()
    train = [p for p in points if p["kind"] == "train"]
    evals = [p for p in points if p["kind"] == "eval"]
    # Every 100th step, plus the newest; all 200 evals (500 steps apart) fit as they are.
    assert [p["step"] for p in train] == [*range(1, 100_000, 100), 100_000]
    assert [p["step"] for p in evals] == list(range(500, 100_001, 500))
    # Real points, not averages: each keeps its own logged loss.
    assert all(p["loss"] == float(p["step"] % 10) for p in train)
    assert [p["step"] for p in points] == sorted(p["step"] for p in points)
    from app.db import get_sessionmaker

    with get_sessionmaker()() as session:
        assert session.scalar(select(func.count()).select_from(Metric)) == 100_200
