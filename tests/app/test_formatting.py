"""How times, ETAs and sizes read on the pages and in the live run stream: one set of rules (app.formatting)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.formatting import duration, eta, human_bytes, live_progress, visible_controls


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "–"), (float("nan"), "–"), (-1, "–"), (0, "0s"), (12.9, "12s"), (184, "3m 04s"), (7500, "2h 05m")],
)
def test_a_duration_reads_in_its_largest_units(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def test_the_eta_is_the_pace_so_far_over_the_steps_left() -> None:
    assert eta(60.0, 10, 40) == pytest.approx(180.0)
    assert eta(60.0, 40, 40) == 0.0
    # Nothing to go on yet, or no known end: no guess.
    assert eta(60.0, 0, 40) is None
    assert eta(60.0, 10, None) is None


@pytest.mark.parametrize(
    ("count", "text"), [(None, "–"), (512, "512 B"), (1536, "1.5 KiB"), (3 * 2**30, "3.0 GiB"), (2**41, "2.0 TiB")]
)
def test_sizes_read_in_binary_units(count: float | None, text: str) -> None:
    assert human_bytes(count) == text


def test_a_live_point_shows_the_time_since_the_start_and_what_is_left_while_running() -> None:
    started = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    now = started + timedelta(seconds=90)
    assert live_progress(started, now, 30, 120, "running") == {"elapsed_text": "1m 30s", "eta_text": "4m 30s"}
    # A start stored without a time zone (SQLite) is UTC, as it was written.
    assert live_progress(started.replace(tzinfo=None), now, 30, 120, "running")["elapsed_text"] == "1m 30s"


@pytest.mark.parametrize("status", ["succeeded", "stopped", "failed", "cancelled"])
def test_a_finished_run_has_no_eta(status: str) -> None:
    started = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    progress = live_progress(started, started + timedelta(seconds=90), 30, 120, status)
    assert progress == {"elapsed_text": "1m 30s", "eta_text": "–"}


def test_a_run_not_yet_started_has_neither() -> None:
    assert live_progress(None, datetime.now(UTC), 0, 120, "queued") == {"elapsed_text": "–", "eta_text": "–"}


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("ab\u202ecd", "ab\\u202ecd"),  # an override would make it read "abdc"
        ("\u2067x\u2069", "\\u2067x\\u2069"),  # isolates
        ("\u200fname\u200e", "\\u200fname\\u200e"),  # marks
        ("שלום run", "שלום run"),  # right-to-left letters are a name, not a control
        ("plain", "plain"),
    ],
)
def test_bidirectional_controls_in_a_name_print_escaped(name: str, shown: str) -> None:
    assert visible_controls(name) == shown
