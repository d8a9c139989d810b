"""Datasets: store an upload once by content hash, check every row and describe it (on an inspect worker), list
them and describe one again for another tokenizer or length."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app import datasets
from app.config import Settings
from app.contracts.datasets import DescribeRequest
from app.dataset_shapes import SHAPE_NAMES
from app.errors import InvalidInput, NotFound
from app.models import Dataset
from app.objectives import objectives_accepting
from app.preflight import base_model_problem
from app.queue import ask_description
from app.schemas import MAX_SEQ_LENGTH, MIN_SEQ_LENGTH, hidden_characters_problem

DEFAULT_SEQ_LENGTH = 256
MAX_NAME = 200


def describe_file(
    *, settings: Settings, path: Path, filename: str, base_model: str, max_seq_length: int
) -> dict[str, Any]:
    """Ask an inspect worker to check and describe the file: InvalidInput with every bad row, by line."""
    resolved, problem = base_model_problem(base_model, settings, enforce_roots=True)
    if problem:
        raise InvalidInput(problem)
    if not MIN_SEQ_LENGTH <= max_seq_length <= MAX_SEQ_LENGTH:
        raise InvalidInput(f"max_seq_length: must be between {MIN_SEQ_LENGTH} and {MAX_SEQ_LENGTH}")
    request = DescribeRequest(path=str(path), base_model=resolved, max_seq_length=max_seq_length)
    answer = ask_description(request)
    if not answer.ok or answer.description is None:
        problems = [f"{filename} line {p.line}: {p.message}" if p.line else f"{filename}: {p.message}"
                    for p in answer.problems]  # fmt: skip
        raise InvalidInput(f"{filename} has {answer.count} bad row(s); nothing was stored", problems=problems)
    return answer.description.model_dump(mode="json", exclude_unset=True) | {"file": filename}


def form_int(fields: dict[str, str], name: str, default: int) -> int:
    """An integer field of the upload form (empty: the default)."""
    value = fields.get(name, "").strip()
    if not value:
        return default
    # ASCII digits only, and few: str.isdigit takes '²' (which int() refuses), and int() refuses 4300+ digits.
    if not re.fullmatch(r"-?[0-9]{1,18}", value):
        raise InvalidInput(f"{name}: Input should be a valid integer, not {value[:40]!r}")
    return int(value)


def store_upload(*, session: Session, settings: Settings, upload: datasets.Upload) -> tuple[Dataset, bool]:
    """Check, describe and keep an upload (its temporary file is removed whatever happens); the same
    content uploaded twice is stored once. True when it is new."""
    try:
        name, display = upload.fields.get("name", ""), datasets.clean_filename(upload.filename)[0]
        if len(name) > MAX_NAME:
            raise InvalidInput(f"name: String should have at most {MAX_NAME} characters")
        if problem := hidden_characters_problem("name", name):
            raise InvalidInput(problem)
        max_seq_length = form_int(upload.fields, "max_seq_length", DEFAULT_SEQ_LENGTH)
        base_model = upload.fields.get("base_model", "") or settings.default_base_model
        existing = datasets.find_by_hash(session=session, sha256=upload.sha256)
        if existing is not None:
            return existing, False
        description = describe_file(
            settings=settings, path=upload.path, filename=display, base_model=base_model, max_seq_length=max_seq_length
        )
        final = datasets.final_path(settings, upload.sha256, upload.suffix)
        shutil.move(upload.path, final)
        dataset = datasets.add_dataset(
            session=session,
            name=(name.strip() or display)[:MAX_NAME],
            filename=display,
            sha256=upload.sha256,
            path=final,
            size=upload.size,
            description=description | {"base_model": base_model},
        )
        return dataset, True
    finally:
        upload.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class ShapeSummary:
    """A file's row shape as the pages label it, and the objectives that train on it."""

    label: str
    trains: tuple[str, ...]


def shape_summary(shape: str | None) -> ShapeSummary:
    return ShapeSummary(SHAPE_NAMES.get(shape or "", shape or "?"), objectives_accepting(shape or ""))


def list_datasets(*, session: Session) -> Sequence[Dataset]:
    """Uploaded datasets, newest first."""
    return datasets.list_datasets(session=session)


def get_dataset(*, session: Session, dataset_id: str) -> Dataset:
    dataset = datasets.get_dataset(session=session, dataset_id=dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset with id {dataset_id}")
    return dataset


def describe_again(
    *, settings: Settings, dataset: Dataset, base_model: str | None, max_seq_length: int | None
) -> dict[str, Any]:
    """The dataset described for another tokenizer or length (what is not given stays as stored), naming the
    base model whose tokenizer counted."""
    stored = dataset.description or {}
    model = base_model or str(stored.get("base_model", ""))
    described = describe_file(
        settings=settings,
        path=Path(dataset.path),
        filename=dataset.filename,
        base_model=model,
        max_seq_length=max_seq_length or int(stored.get("max_seq_length", DEFAULT_SEQ_LENGTH)),
    )
    return described | {"base_model": model}
