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
__all__ = ["SHAPE_NAMES", "conversational_record", "first_row_shape", "shape_of_record", "trains_with_chat"]
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


def conversational_record(record: object) -> bool:
    """Whether a record's rows go through a chat template: a conversation, or a preference row (or unpaired row)
    whose prompt is a list of turns (in a CSV cell or Parquet string column, as JSON text)."""
    if not isinstance(record, dict):
        return False
    shape = shape_of_record(record)
    if shape == "messages":
        return True
    if shape not in ("preference", "unpaired"):
        return False
    source = record.get("input")
    prompt = source.get("messages") if isinstance(source, dict) else record.get("prompt")
    return isinstance(prompt, list) or (isinstance(prompt, str) and prompt.lstrip().startswith("[{"))


def trains_with_chat(dataset: str | Path) -> bool:
    """Whether a run on this file renders its rows through a chat template: messages rows and conversational
    pairs do; prompt/completion, text and plain-text pairs are trained on as they are. The playground prompts,
    and an export's Modelfile reads, the same way."""
    return conversational_record(first_record(Path(dataset)))


def first_row_shape(path: str | Path) -> str | None:
    """The shape of the file's first record, or None where it cannot be told cheaply (Parquet, a first
    record over HEAD_BYTES, an unreadable file): the worker's check then decides."""
    return shape_of_record(first_record(Path(path)))


def first_record(path: Path) -> dict[str, object] | None:
    """The file's first record (a CSV's header with its first row's cells, cut at HEAD_BYTES), or None."""
    suffix = path.suffix.lower()
    try:
        with path.open("rb") as handle:
            head = handle.read(HEAD_BYTES)
    except OSError:
        return None
    text = head.decode("utf-8-sig", errors="replace")
    if suffix == ".csv":
        reader = csv.reader(io.StringIO(text))
        try:
            header = next(reader)
            cells = next(reader, [])
        except (StopIteration, csv.Error):
            return None
        return {name.strip(): cells[i] if i < len(cells) else None for i, name in enumerate(header)}
    if suffix not in (".jsonl", ".json"):
        return None
    stripped = text.lstrip()
    record: object = None
    if stripped.startswith("["):  # a JSON list: the first element
        try:
            record, _ = json.JSONDecoder().raw_decode(stripped[1:].lstrip())
        except json.JSONDecodeError:
            return None
    else:
        for line in stripped.split("\n"):  # not splitlines: JSON strings may hold U+2028 raw
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    return None
                break
    return record if isinstance(record, dict) else None
