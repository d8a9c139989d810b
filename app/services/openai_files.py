"""OpenAI's Files, as loradeck's datasets: `file-<dataset id>` is a dataset, checked and described on upload
like any other (every bad row by line), listed with the ones uploaded in the dashboard.

What loradeck cannot train on yet is refused here, by line, before the file is stored, rather than trained on
as something else: rows with `tools` or `functions` (and turns with tool calls, or from a tool). A turn's `weight`
is checked as OpenAI checks it (assistant turns only, 0 or 1) and honoured: 0 keeps the turn as context, out of the
loss (worker.data.chat); a row with nothing left to learn is refused by the worker's check, naming its line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from app import datasets
from app.config import Settings
from app.errors import InvalidInput, NotFound
from app.models import Dataset, Run
from app.paths import inside
from app.services.datasets import store_upload

FILE_PREFIX = "file-"
PURPOSES = ("fine-tune",)
# OpenAI's purposes that loradeck has no use for: refused, naming what it takes.
OTHER_PURPOSES = ("assistants", "batch", "vision", "user_data", "evals")
SUFFIX = ".jsonl"
MAX_LIST = 10_000
MAX_PROBLEMS = 100
LINE_CAP = 8 * 1024**2  # a longer line is left to the worker's check, which names it
TOOL_KEYS = ("tools", "functions", "parallel_tool_calls")
TURN_TOOL_KEYS = ("tool_calls", "function_call")
TOOL_ROLES = ("tool", "function")
Order = Literal["asc", "desc"]


def file_id(dataset: Dataset) -> str:
    return FILE_PREFIX + dataset.id


def unix_time(moment: datetime) -> int:
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def file_object(dataset: Dataset) -> dict[str, Any]:
    """A dataset as OpenAI's FileObject."""
    return {
        "id": file_id(dataset),
        "object": "file",
        "bytes": dataset.size_bytes,
        "created_at": unix_time(dataset.created_at),
        "filename": dataset.filename,
        "purpose": "fine-tune",
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def get_file(*, session: Session, file: str) -> Dataset:
    """The dataset a file id names (what a fine-tuning job's `training_file` is resolved with)."""
    dataset = session.get(Dataset, file.removeprefix(FILE_PREFIX)) if file.startswith(FILE_PREFIX) else None
    if dataset is None:
        raise NotFound(f"No such File object: {file}")
    return dataset


# --- upload


def purpose_problem(purpose: str) -> str | None:
    if purpose in PURPOSES:
        return None
    if not purpose:
        return "purpose: Field required; loradeck takes files with purpose 'fine-tune'"
    return f"purpose: '{purpose[:40]}' is not supported here; loradeck takes files with purpose 'fine-tune'"


def create_file(*, session: Session, settings: Settings, upload: datasets.Upload) -> Dataset:
    """Check the purpose and what loradeck cannot train on yet, then store the upload as a dataset (checked
    and described by an inspect worker); the upload's temporary file is removed whatever happens."""
    try:
        if problem := purpose_problem(upload.fields.get("purpose", "").strip()):
            raise InvalidInput(problem)
        if any(name.startswith("expires_after") for name in upload.fields):
            raise InvalidInput("expires_after: loradeck keeps a file until it is deleted; leave expires_after out")
        if upload.suffix != SUFFIX:
            raise InvalidInput(f"file: a fine-tuning file is JSONL ({SUFFIX}); CSV and Parquet go to /api/v1/datasets")
        display = datasets.clean_filename(upload.filename)[0]
        if problems := unsupported_rows(upload.path, display):
            raise InvalidInput(f"{display} has {len(problems)} bad row(s); nothing was stored", problems=problems)
        dataset, _ = store_upload(session=session, settings=settings, upload=upload)
        return dataset
    finally:
        upload.path.unlink(missing_ok=True)


def unsupported_rows(path: Path, filename: str) -> list[str]:
    """`<file> line N: ...` for each row that asks for what loradeck does not train on yet (at most
    MAX_PROBLEMS); rows that are not JSON objects are left to the worker's check, which names them."""
    problems: list[str] = []
    with path.open("rb") as handle:
        number = 0
        while piece := handle.readline(LINE_CAP + 1):
            number += 1
            if len(piece) > LINE_CAP:
                while (rest := handle.readline(LINE_CAP)) and not rest.endswith(b"\n"):
                    pass
                continue
            try:
                row = json.loads(piece)
            except (ValueError, RecursionError):
                continue
            if isinstance(row, dict) and (problem := unsupported(row)):
                problems.append(f"{filename} line {number}: {problem}")
                if len(problems) >= MAX_PROBLEMS:
                    break
    return problems


def unsupported(row: dict[str, Any]) -> str | None:
    """Why loradeck cannot train on this row as the file means it yet, or None."""
    for key in TOOL_KEYS:
        if key in row:
            return (
                f'"{key}" is not supported yet: loradeck trains on system, user and assistant text turns; '
                f'remove "{key}" from the row'
            )
    messages = row.get("messages")
    if not isinstance(messages, list):
        return None
    for number, turn in enumerate(messages, start=1):
        if not isinstance(turn, dict):
            continue
        where = f'"messages" turn {number}'
        if turn.get("role") in TOOL_ROLES:
            return f'{where}: role "{turn["role"]}" is not supported yet; use system, user or assistant turns'
        if call := next((name for name in TURN_TOOL_KEYS if name in turn), None):
            return f'{where}: "{call}" is not supported yet; an assistant turn is text in "content"'
        if "weight" in turn:
            weight = turn["weight"]
            if turn.get("role") != "assistant":
                return f'{where}: "weight" is for assistant turns only'
            if isinstance(weight, bool) or weight not in (0, 1):
                return f'{where}: "weight" must be 0 or 1, got {json.dumps(weight)[:40]}'
    return None


# --- list, content, delete


@dataclass(frozen=True)
class Page:
    files: list[Dataset]
    has_more: bool


def list_files(*, session: Session, after: str | None, limit: int, order: Order, purpose: str | None) -> Page:
    """Files by created_at (`order`), `limit` of them after the file `after`; `purpose` other than fine-tune
    lists none."""
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput(f"limit: must be between 1 and {MAX_LIST}")
    if purpose and purpose not in PURPOSES:
        return Page([], False)
    query = select(Dataset)
    if order == "asc":
        query = query.order_by(Dataset.created_at.asc(), Dataset.id.asc())
    else:
        query = query.order_by(Dataset.created_at.desc(), Dataset.id.desc())
    if after:
        try:
            cursor = get_file(session=session, file=after)
        except NotFound:
            raise InvalidInput(f"after: no file with id {after[:60]}") from None
        if order == "asc":
            past = or_(Dataset.created_at > cursor.created_at,
                       and_(Dataset.created_at == cursor.created_at, Dataset.id > cursor.id))  # fmt: skip
        else:
            past = or_(Dataset.created_at < cursor.created_at,
                       and_(Dataset.created_at == cursor.created_at, Dataset.id < cursor.id))  # fmt: skip
        query = query.where(past)
    found = list(session.scalars(query.limit(limit + 1)))
    return Page(found[:limit], len(found) > limit)


def content_path(*, session: Session, settings: Settings, file: str) -> tuple[Dataset, Path]:
    """The stored file of a file id (only ever one under the datasets dir)."""
    dataset = get_file(session=session, file=file)
    path = Path(dataset.path)
    if not inside(path, [settings.datasets_dir.resolve()]) or not path.is_file():
        raise NotFound(f"the content of {file} is no longer on disk")
    return dataset, path


def delete_file(*, session: Session, file: str) -> dict[str, Any]:
    """Forget the file; its bytes go too unless a run still reads them (to resume, or to evaluate again)."""
    dataset = get_file(session=session, file=file)
    path = dataset.path
    session.delete(dataset)
    session.commit()
    if not any(path in (spec.get("dataset"), spec.get("eval_dataset")) for spec in session.scalars(select(Run.spec))):
        Path(path).unlink(missing_ok=True)
    return {"id": file, "object": "file", "deleted": True}
