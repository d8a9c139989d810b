"""Uploaded datasets: stored once by content hash (app.web.uploads streams them in), described by a worker."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import InputTooLarge, InvalidInput
from app.models import Dataset

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
SAFE_NAME = re.compile(r"[^\w.\- ]+")


class UploadRefused(InvalidInput):
    """The upload cannot be stored; the message says what to fix."""


class UploadTooLarge(UploadRefused, InputTooLarge):
    """The upload is past the upload limit; the message names the limit and its setting."""


@dataclass
class Upload:
    """A parsed upload: the file stored under a temporary name (the caller moves or deletes it), and the fields."""

    path: Path
    filename: str
    sha256: str
    size: int
    suffix: str
    fields: dict[str, str] = field(default_factory=dict)


def clean_filename(filename: str) -> tuple[str, str]:
    """A display name and the file's suffix, from an uploaded file name (any path in it is dropped)."""
    base = Path(filename.replace("\\", "/")).name.strip()
    suffix = Path(base).suffix.lower()
    if suffix not in SUFFIXES:
        raise UploadRefused(f"file: {base or 'the file'} is not one of {', '.join(SUFFIXES)}")
    return SAFE_NAME.sub("_", base)[:200], suffix


def final_path(settings: Settings, sha256: str, suffix: str) -> Path:
    return settings.datasets_dir / f"{sha256}{suffix}"


def find_by_hash(*, session: Session, sha256: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.sha256 == sha256))


def add_dataset(
    *, session: Session, name: str, filename: str, sha256: str, path: Path, size: int, description: dict[str, Any]
) -> Dataset:
    dataset = Dataset(
        name=name,
        filename=filename,
        sha256=sha256,
        path=str(path),
        size_bytes=size,
        rows=description.get("rows"),
        shape=description.get("shape"),
        description=description,
    )
    session.add(dataset)
    session.commit()
    return dataset


def list_datasets(*, session: Session) -> Sequence[Dataset]:
    return session.scalars(select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id)).all()


def get_dataset(*, session: Session, dataset_id: str) -> Dataset | None:
    return session.get(Dataset, dataset_id)
