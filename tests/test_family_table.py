"""The README's family table is the family matrix's recorded results, rendered (bench/families.py)."""

from __future__ import annotations

import json

from bench.families import FAMILIES, MERGES, README, RESULTS, readme_table, render


def test_readme_shows_the_recorded_family_matrix() -> None:
    results = json.loads(RESULTS.read_text(encoding="utf-8"))
    assert readme_table(README.read_text(encoding="utf-8")) == render(results)


def test_the_recorded_matrix_covers_every_family_and_holds_its_bounds() -> None:
    results = json.loads(RESULTS.read_text(encoding="utf-8"))
    assert set(results) == set(FAMILIES)
    for name, row in results.items():
        for method in MERGES:
            assert row[f"merge/{method}"]["loradeck"] < 1e-4, (name, method)
        for method in ("lora", "qlora"):
            assert row[f"train/{method}"]["last_loss"] < row[f"train/{method}"]["first_loss"], (name, method)
            assert row[f"train/{method}"]["merge_diff"] < 1e-4, (name, method)
    assert results["phi3"]["estimate/ia3"] == "refused: feedforward_modules"
