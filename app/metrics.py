"""Metric points for drawing: every point for a short run, an even sample for a long one.

The database keeps every point; only what is sent to a chart is thinned. Thinning picks every k-th logged
step through the (run_id, kind, step) index, so a run with a million points answers as fast as one with a
few thousand: no query ever reads the whole history.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Metric

FIELDS = (
    "time", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_sec", "tokens_seen", "token_accuracy",
    "mfu", "gpu_memory_bytes", "gpu_peak_bytes",
)  # fmt: skip
COUNTS = ("tokens_seen", "gpu_memory_bytes", "gpu_peak_bytes")  # whole numbers, as JSON integers
# Beside the columns: the objective's named values (app.objectives), a JSON object per point.
KINDS = ("train", "eval")
COLUMNS = [Metric.step, Metric.kind, *(getattr(Metric, name) for name in FIELDS), Metric.values]


def _row(step: int, kind: str, *values: Any) -> dict[str, Any]:
    point: dict[str, Any] = {"step": int(step), "kind": kind}
    *columns, named = values
    point.update({name: (float(v) if v is not None else None) for name, v in zip(FIELDS, columns, strict=True)})
    point["values"] = named or {}
    for name in COUNTS:
        if point[name] is not None:
            point[name] = int(point[name])
    return point


def _kind_points(session: Session, run_id: str, kind: str, after_step: int, max_points: int) -> list[dict[str, Any]]:
    where = (Metric.run_id == run_id, Metric.kind == kind, Metric.step > after_step)
    first = session.scalars(select(Metric.step).where(*where).order_by(Metric.step).limit(3)).all()
    if not first:
        return []
    high = session.scalar(select(func.max(Metric.step)).where(*where)) or first[0]
    # Points come every `logging_steps` (or `eval_steps`): sample on that grid, so each pick is a real step.
    every = math.gcd(*(b - a for a, b in zip(first, first[1:], strict=False))) or 1
    logged = (high - first[0]) // every + 1
    if logged <= max_points:
        query = select(*COLUMNS).where(*where).order_by(Metric.step, Metric.id)
    else:
        stride = math.ceil(logged / max_points) * every
        picks = sorted({*range(first[0], high + 1, stride), high})
        # Only equality on step: with a range beside it, SQLite scans the range instead of seeking each pick.
        query = select(*COLUMNS).where(Metric.run_id == run_id, Metric.kind == kind, Metric.step.in_(picks))
        query = query.order_by(Metric.step, Metric.id)
    return [_row(*row) for row in session.execute(query)]


def metric_points(
    *, session: Session, run_id: str, after_step: int = -1, max_points: int | None = None
) -> list[dict[str, Any]]:
    """Points after `after_step`, by step; with `max_points`, at most that many of each kind, evenly
    spread over the run (the newest always included)."""
    if not max_points:
        where = (Metric.run_id == run_id, Metric.step > after_step)
        return [_row(*row) for row in session.execute(select(*COLUMNS).where(*where).order_by(Metric.step, Metric.id))]
    points = [p for kind in KINDS for p in _kind_points(session, run_id, kind, after_step, max_points)]
    return sorted(points, key=lambda point: (point["step"], KINDS.index(point["kind"])))
