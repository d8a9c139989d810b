"""The row shape of a dataset file from its first record, read with the standard library in bounded memory.

Enough for the web to refuse, before queueing, an eval file whose rows are of another shape than the
training file's; the worker reads and checks every row (worker.data.files), with the same keys deciding.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from app.objectives.base import SHAPE_NAMES

HEAD_BYTES = 1 << 20  # a first record past 1 MiB is left to the worker's full check
__all__ = ["SHAPE_NAMES", "first_row_shape", "shape_of_record", "trains_with_chat"]
PAIR_KEYS = ("chosen", "rejected", "preferred_output", "non_preferred_output")


def shape_of_record(record: object) -> str | None:
    """The shape a parsed record has, by the keys worker.data.files looks at first; None if none fits."""
    if not isinstance(record, dict):
        return None
    if any(key in record for key in PAIR_KEYS):
        return "preference"
    if "label" in record and ("prompt" in record or "completion" in record):
        return "unpaired"
    if "messages" in record:
        return "messages"
    if "prompt" in record or "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    return None


def trains_with_chat(dataset: str | Path) -> bool:
    """Whether a run on this file renders its rows through a chat template: messages rows do; prompt/completion
    and text rows are trained on as they are. The playground prompts, and an export's Modelfile reads, the
    same way."""
    return first_row_shape(dataset) == "messages"


def first_row_shape(path: str | Path) -> str | None:
    """The shape of the file's first record, or None where it cannot be told cheaply (Parquet, a first
    record over HEAD_BYTES, an unreadable file): the worker's check then decides."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        with path.open("rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError:
        return None
    text = head.decode("utf-8-sig", errors="replace")
    if suffix == ".csv":
        try:
            header = next(csv.reader(io.StringIO(text)))
        except (StopIteration, csv.Error):
            return None
        return shape_of_record(dict.fromkeys(header))
    if suffix not in (".jsonl", ".json"):
        return None
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON list: the first element
        try:
            record, _ = json.JSONDecoder().raw_decode(stripped[1:].lstrip())
        except json.JSONDecodeError:
            return None
        return shape_of_record(record)
    for line in stripped.split("\n"):  # not splitlines: JSON strings may hold U+2028 raw
        if line.strip():
            try:
                return shape_of_record(json.loads(line))
            except json.JSONDecodeError:
                return None
    return None
