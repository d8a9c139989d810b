"""A browser's side of the live streams (text/event-stream): the events as they arrive, each with its id, name
and data. The server writes an event as `id:`, `event:` and one `data:` line (app.events.Event.to_sse)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import httpx


class Event(NamedTuple):
    id: str
    name: str
    data: Any


def parse_events(lines: Iterable[str], *, until: tuple[str, ...] = ()) -> Iterator[Event]:
    """The events in a stream's lines; after an event named in `until`, no more are read."""
    event_id, name = "", ""
    for line in lines:
        if line.startswith("id: "):
            event_id = line.removeprefix("id: ")
        elif line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield Event(event_id, name, json.loads(line.removeprefix("data: ")))
            if name in until:
                return


@contextmanager
def open_stream(
    client: httpx.Client, url: str, *, last_event_id: str = "", until: tuple[str, ...] = ()
) -> Iterator[Iterator[Event]]:
    """The events at `url` as they arrive, from after `last_event_id` where one is given (as a browser asks when
    it reconnects); an event named in `until` is the last one read. The connection is open inside the block."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", url, headers=headers) as response:
        yield parse_events(response.iter_lines(), until=until)
