"""Comparing runs: their results side by side, the spec fields in which they differ, every metric point."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app import runs
from app.models import Run
from app.objectives import REGISTRY
from app.runs import METRIC_FIELDS

MAX_COMPARED = 8
EXPORT_COLUMNS = ("run_id", "run_name", "step", "kind", "time", *METRIC_FIELDS)


@dataclass
class Comparison:
    compared: list[Run]
    results: list[Run]  # sorted by the chosen column
    eval_losses: dict[str, float]
    token_accuracies: dict[str, float]  # of each run's last evaluation
    sort: str
    differences: list[dict[str, Any]]
    candidates: Sequence[Run]  # what the picker offers
    series: list[dict[str, str]]  # the named values (app.objectives) the compared runs' objectives log
    preference: dict[str, dict[str, float]]  # run id -> its preference accuracy, base and adapter
    reward: dict[str, dict[str, float]]  # run id -> its held-out mean reward (greedy), base and adapter (GRPO)


def compare(*, session: Session, run_ids: Sequence[str], sort: str) -> Comparison:
    """Up to MAX_COMPARED runs (NotFound names a missing one), their results sorted by `sort`."""
    ids = list(dict.fromkeys(run_ids))[:MAX_COMPARED]
    compared = [runs.get_run(session=session, run_id=run_id) for run_id in ids]
    eval_losses = runs.final_eval_losses(session=session, run_ids=ids)
    return Comparison(
        compared=compared,
        results=runs.sort_runs(compared, eval_losses, sort),
        eval_losses=eval_losses,
        token_accuracies=runs.final_token_accuracies(session=session, run_ids=ids),
        sort=sort,
        differences=differing_fields(compared) if len(compared) > 1 else [],
        candidates=runs.list_runs(session=session, limit=100),
        series=named_series(compared),
        preference={run.id: figures for run in compared if (figures := preference_accuracy(run))},
        reward={run.id: figures for run in compared if (figures := mean_reward(run))},
    )


def named_series(compared: Sequence[Run]) -> list[dict[str, str]]:
    """The named values of the compared runs' objectives, each once (the first objective's label), in the
    registry's order: what the values chart can overlay. SFT runs add none."""
    seen: dict[str, dict[str, str]] = {}
    for run in compared:
        objective = REGISTRY.get(str(run.spec.get("objective") or "sft"), REGISTRY["sft"])
        units = {panel.key: panel.unit for panel in objective.panels}
        for series in objective.series:
            seen.setdefault(series.key, {"key": series.key, "label": series.label, "unit": units.get(series.panel, "")})
    return list(seen.values())


def preference_accuracy(run: Run) -> dict[str, float] | None:
    """The share of eval pairs where chosen beat rejected, base (or starting run) and adapter, once evaluated
    (app.contracts.evaluation: preference.{base,adapter}.accuracy)."""
    preference = (run.evaluation or {}).get("preference") or {}
    try:
        return {side: float(preference[side]["accuracy"]) for side in ("base", "adapter")}
    except (KeyError, TypeError, ValueError):
        return None


def mean_reward(run: Run) -> dict[str, float] | None:
    """The held-out mean reward of the greedy answers, base (or starting run) and adapter, once a GRPO run is
    evaluated (app.contracts.evaluation: reward.{base,adapter}.greedy)."""
    reward = (run.evaluation or {}).get("reward") or {}
    try:
        return {side: float(reward[side]["greedy"]) for side in ("base", "adapter")}
    except (KeyError, TypeError, ValueError):
        return None


def differing_fields(compared: list[Run]) -> list[dict[str, Any]]:
    """The spec fields whose values are not the same in every run, with each run's value."""
    names: list[str] = []
    for run in compared:
        names += [name for name in run.spec if name not in names]
    rows = []
    for name in names:
        values = [run.spec.get(name) for run in compared]
        if any(value != values[0] for value in values[1:]):
            rows.append({"field": name, "values": values})
    return rows


def metric_rows(*, session: Session, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Every metric point of the runs, one row per point, in EXPORT_COLUMNS."""
    rows = []
    for run_id in list(dict.fromkeys(run_ids))[:MAX_COMPARED]:
        run = runs.get_run(session=session, run_id=run_id)
        for metric in runs.list_metrics(session=session, run_id=run.id):
            values = {name: getattr(metric, name) for name in ("step", "kind", "time", *METRIC_FIELDS)}
            rows.append({"run_id": run.id, "run_name": run.name} | values)
    return rows
