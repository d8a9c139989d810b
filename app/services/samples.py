"""GRPO's sampled completions as the API and the run page read them: the newest events of the run's samples file
(RunDir.samples_file: one SamplesEvent's data a line, appended by the worker while it trains), read from the end
of the file within a bound, so a long run's file costs no more than its last events."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.config import Settings
from app.contracts.events import SamplesEvent
from app.rundir import RunDir
from app.services.runs import get_run

MAX_SAMPLES = 100  # events one request may ask for
MAX_BYTES = 4 * 1024 * 1024  # read from the file's end at most: an event holds one prompt and a few completions
_BLOCK = 64 * 1024


def latest_samples(*, session: Session, settings: Settings, run_id: str, limit: int) -> list[SamplesEvent]:
    """The run's newest `limit` sampled-completion events, oldest first (NotFound for an unknown run; none for a
    run that samples nothing, or has not yet)."""
    get_run(session=session, run_id=run_id)
    return read_latest(RunDir.of(run_id, settings).samples_file, min(limit, MAX_SAMPLES))


def read_latest(path: Path, limit: int, max_bytes: int = MAX_BYTES) -> list[SamplesEvent]:
    """The last `limit` events of a samples file, oldest first. A line that does not read (the last one while the
    worker is still writing it, or one cut by the bound) is passed over."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            start = size = handle.tell()
            data = b""
            while start > 0 and size - start < max_bytes and data.count(b"\n") <= limit:
                step = min(_BLOCK, start, max_bytes - (size - start))
                start -= step
                handle.seek(start)
                data = handle.read(step) + data
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # begins mid-line
    events: list[SamplesEvent] = []
    for line in reversed(lines):
        if len(events) == limit:
            break
        if event := _event(line):
            events.append(event)
    return events[::-1]


def _event(line: bytes) -> SamplesEvent | None:
    if not line.strip():
        return None
    try:
        data = json.loads(line)
        if isinstance(data, dict) and data.get("type") == SamplesEvent.type:
            del data["type"]  # the event as its stream carries it, name and all
        return SamplesEvent.model_validate(data)
    except (ValueError, ValidationError):  # a partial line (JSON's ValueError), or not an event
        return None
