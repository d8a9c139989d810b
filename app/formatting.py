"""How numbers read on a page, written once: durations, an ETA, byte sizes, the run states that are final.

Pages rendered on the server use these as Jinja filters and globals; the live run page gets the same values
computed here, inside its server-sent events (app.services.run_stream), so no rule is written again in JS.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from app.models import Run, RunStatus

FINAL_STATUSES = tuple(status.value for status in RunStatus if status.finished)


def duration(seconds: float | None) -> str:
    """12s, 3m 04s, 2h 05m; – when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    whole = int(seconds)
    hours, minutes, secs = whole // 3600, whole % 3600 // 60, whole % 60
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def eta(elapsed: float, step: int, total: int | None) -> float | None:
    """Seconds left at the pace so far: `step` of `total` steps took `elapsed` seconds."""
    if not total or total <= 0 or step <= 0 or elapsed <= 0:
        return None
    return elapsed / step * max(0, total - step)


def human_bytes(count: float | None) -> str:
    """1536 -> "1.5 KiB"; binary units, as GPU memory and files are counted here."""
    if count is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def elapsed_since(started_at: datetime | None, until: datetime) -> float | None:
    """Seconds from the run's start (its latest claim) to `until`; None before it started."""
    if started_at is None:
        return None
    started = started_at if started_at.tzinfo else started_at.replace(tzinfo=UTC)
    until = until if until.tzinfo else until.replace(tzinfo=UTC)
    return max(0.0, (until - started).total_seconds())


def progress_of(run: Run, now: datetime) -> dict[str, float | None]:
    """Share done, seconds elapsed and an ETA from the pace so far (None where it cannot be known)."""
    total = run.max_steps if run.max_steps and run.max_steps > 0 else None
    percent = min(100.0, 100.0 * run.step / total) if total else None
    elapsed = elapsed_since(run.started_at, run.finished_at or now)
    left = eta(elapsed, run.step, total) if elapsed is not None and run.status == RunStatus.running else None
    return {"percent": percent, "elapsed": elapsed, "eta": left}


def live_progress(
    started_at: datetime | None, now: datetime, step: int, total: int | None, status: str
) -> dict[str, str]:
    """What the run page shows beside a live metric point: the time since the run started and the ETA, as
    `progress_of` reckons them for the runs list."""
    elapsed = elapsed_since(started_at, now)
    left = None if elapsed is None or status in FINAL_STATUSES else eta(elapsed, step, total)
    return {"elapsed_text": duration(elapsed), "eta_text": duration(left)}


# Bidirectional controls (LRM, RLM, ALM, the embeddings and overrides, the isolates): in a name they reorder what
# follows them, so an uploaded `ab\u202ecd` would read "abdc". Pages show them escaped, as they would be typed.
BIDI_CONTROLS = re.compile("[\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]")


def visible_controls(text: str) -> str:
    """`text` with each bidirectional control written as its escape (`\\u202e`), so it shows what it holds."""
    return BIDI_CONTROLS.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
