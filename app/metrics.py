"""Metric points for drawing: every point for a short run, evenly bucketed averages for a long one.

The database keeps every point; only what is sent to a chart is thinned, in SQL, so a run with a
million points answers as fast as one with a hundred.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Metric

FIELDS = ("time", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_sec", "tokens_seen")


def _row(step: int, kind: str, values: Any) -> dict[str, Any]:
    point: dict[str, Any] = {"step": int(step), "kind": kind}
    point.update({name: (float(v) if v is not None else None) for name, v in zip(FIELDS, values, strict=True)})
    if point["tokens_seen"] is not None:
        point["tokens_seen"] = int(point["tokens_seen"])
    return point


def metric_points(
    *, session: Session, run_id: str, after_step: int = -1, max_points: int | None = None
) -> list[dict[str, Any]]:
    """Points after `after_step`, by step; with `max_points`, each kind is averaged into at most that many
    buckets of consecutive steps (each bucket reported at its last step)."""
    columns = [getattr(Metric, name) for name in FIELDS]
    where = (Metric.run_id == run_id, Metric.step > after_step)
    count = session.scalar(select(func.count()).select_from(Metric).where(*where)) or 0
    if not max_points or count <= max_points:
        query = select(Metric.step, Metric.kind, *columns).where(*where).order_by(Metric.step, Metric.id)
        return [_row(step, kind, values) for step, kind, *values in session.execute(query)]
    low, high = session.execute(select(func.min(Metric.step), func.max(Metric.step)).where(*where)).one()
    width = max(1, -(-(high - low + 1) // max_points))  # ceil: at most max_points buckets per kind
    # Floor division (SQLAlchemy renders it for each database): consecutive steps share a bucket.
    bucket = ((Metric.step - low) // width).label("bucket")
    query = (
        select(func.max(Metric.step), Metric.kind, *[func.avg(column) for column in columns])
        .where(*where)
        .group_by(Metric.kind, bucket)
        .order_by(func.max(Metric.step))
    )
    return [_row(step, kind, values) for step, kind, *values in session.execute(query)]
