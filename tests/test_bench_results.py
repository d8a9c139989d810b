"""Recorded benchmark results are shareable: no figure names a path on the machine that measured it."""

from __future__ import annotations

import json
from typing import Any

from bench.common import REPO, RESULTS_DIR, portable


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return [value] if isinstance(value, str) else []


def test_no_recorded_result_holds_an_absolute_path() -> None:
    recorded = sorted(RESULTS_DIR.glob("*.json"))
    assert recorded
    for path in recorded:
        local = [s for s in _strings(json.loads(path.read_text(encoding="utf-8"))) if s.startswith("/")]
        assert local == [], f"{path.name} records local paths: {local[:3]}"


def test_paths_are_recorded_relative_to_the_checkout_or_by_name() -> None:
    figures = {
        "spec": {"base_model": str(REPO / "assets" / "tiny-llama"), "dataset": "/tmp/bench-x1y2/rows.jsonl"},
        "prompts": ["/a question, not a path", "/help", "relative/stays"],
        "steps": 3,
    }
    assert portable(figures) == {
        "spec": {"base_model": "assets/tiny-llama", "dataset": "rows.jsonl"},
        "prompts": ["/a question, not a path", "/help", "relative/stays"],
        "steps": 3,
    }
