"""Datasets: upload (streamed, size-limited, stored by content hash), validate row by row, describe."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from app import datasets
from app.config import SAMPLE_DATASET_DIR, Settings, get_settings
from app.models import Dataset
from app.paths import model_path_problem
from app.queue import DESCRIBE_DATASET_TASK, InspectUnavailable, ask_inspector
from app.schemas import check_base_model
from app.web.deps import SessionDep, SettingsDep, is_htmx, templates
from app.web.uploads import UPLOAD_OPENAPI, read_upload

router = APIRouter()


def dataset_out(dataset: Dataset) -> dict[str, Any]:
    return {
        "id": dataset.id,
        "name": dataset.name,
        "filename": dataset.filename,
        "sha256": dataset.sha256,
        "path": dataset.path,
        "size_bytes": dataset.size_bytes,
        "rows": dataset.rows,
        "shape": dataset.shape,
        "created_at": dataset.created_at.isoformat(),
        "description": dataset.description,
    }


def _describe(path: Path, filename: str, base_model: str, max_seq_length: int) -> dict[str, Any]:
    """Ask a worker to validate and describe the file; 422 with every bad row, by line, if it has any."""
    try:
        base_model = check_base_model(base_model)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    outside = model_path_problem(base_model, get_settings())
    if outside:
        raise HTTPException(422, outside)
    if not 8 <= max_seq_length <= 1_048_576:
        raise HTTPException(422, "max_seq_length: must be between 8 and 1048576")
    payload = {"path": str(path), "base_model": base_model, "max_seq_length": max_seq_length}
    try:
        answer = ask_inspector(DESCRIBE_DATASET_TASK, payload)
    except InspectUnavailable as exc:
        raise HTTPException(503, str(exc)) from exc
    if not answer["ok"]:
        problems = [f"{filename} line {p['line']}: {p['message']}" if p["line"] else f"{filename}: {p['message']}"
                    for p in answer["problems"]]  # fmt: skip
        count = answer["count"]
        raise HTTPException(
            422, {"message": f"{filename} has {count} bad row(s); nothing was stored", "problems": problems}
        )
    return dict(answer["description"]) | {"file": filename}


def _form_int(fields: dict[str, str], name: str, default: int) -> int:
    value = fields.get(name, "").strip()
    if not value:
        return default
    if not value.lstrip("-").isdigit():
        raise HTTPException(422, f"{name}: Input should be a valid integer, not {value[:40]!r}")
    return int(value)


async def upload_dataset(*, request: Request, session: SessionDep, settings: Settings) -> tuple[Dataset, bool]:
    """Store, validate and describe an upload; the same content uploaded twice is stored once."""
    try:
        upload = await read_upload(request, settings)
    except datasets.UploadRefused as exc:
        status = 413 if "upload limit" in str(exc) else 422
        raise HTTPException(status, str(exc)) from exc
    try:
        name, display = upload.fields.get("name", ""), datasets.clean_filename(upload.filename)[0]
        if len(name) > 200:
            raise HTTPException(422, "name: String should have at most 200 characters")
        max_seq_length = _form_int(upload.fields, "max_seq_length", 256)
        base_model = upload.fields.get("base_model", "") or settings.default_base_model
        existing = datasets.find_by_hash(session=session, sha256=upload.sha256)
        if existing is not None:
            return existing, False
        description = await run_in_threadpool(_describe, upload.path, display, base_model, max_seq_length)
        final = datasets.final_path(settings, upload.sha256, upload.suffix)
        shutil.move(upload.path, final)
        dataset = datasets.add_dataset(
            session=session,
            name=(name.strip() or display)[:200],
            filename=display,
            sha256=upload.sha256,
            path=final,
            size=upload.size,
            description=description | {"base_model": base_model},
        )
        return dataset, True
    finally:
        upload.path.unlink(missing_ok=True)


@router.post("/api/v1/datasets", status_code=201, tags=["api"], openapi_extra=UPLOAD_OPENAPI)
async def create_dataset(request: Request, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Upload a JSONL, CSV or Parquet dataset (multipart: file, and optionally name, base_model and
    max_seq_length): every bad row is reported by line; a good file is described."""
    dataset, _ = await upload_dataset(request=request, session=session, settings=settings)
    return dataset_out(dataset)


@router.get("/api/v1/datasets", tags=["api"])
def list_datasets(session: SessionDep) -> list[dict[str, Any]]:
    """Uploaded datasets, newest first."""
    return [dataset_out(d) for d in datasets.list_datasets(session=session)]


def lookup_dataset(session: SessionDep, dataset_id: str) -> Dataset:
    dataset = datasets.get_dataset(session=session, dataset_id=dataset_id)
    if dataset is None:
        raise HTTPException(404, f"no dataset with id {dataset_id}")
    return dataset


@router.get("/api/v1/datasets/{dataset_id}", tags=["api"])
def get_dataset(
    dataset_id: str,
    session: SessionDep,
    base_model: str | None = None,
    max_seq_length: Annotated[int | None, Query(ge=8, le=1_048_576)] = None,
) -> dict[str, Any]:
    """One dataset; with base_model or max_seq_length, described again for that tokenizer and length."""
    dataset = lookup_dataset(session, dataset_id)
    out = dataset_out(dataset)
    if base_model or max_seq_length:
        stored = dataset.description or {}
        out["description"] = _describe(
            Path(dataset.path),
            dataset.filename,
            base_model or stored.get("base_model", ""),
            max_seq_length or int(stored.get("max_seq_length", 256)),
        )
    return out


# --- pages


@router.get("/datasets", response_class=HTMLResponse, include_in_schema=False)
def datasets_page(request: Request, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """Upload a dataset (drag and drop) and see the ones already uploaded."""
    context = {"datasets": datasets.list_datasets(session=session), "default_model": settings.default_base_model}
    return templates.TemplateResponse(request, "datasets.html", context)


@router.post("/datasets", include_in_schema=False, response_model=None)
async def upload_form(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """The upload form: a good file opens its page; a bad one is reported row by row."""
    try:
        dataset, _ = await upload_dataset(request=request, session=session, settings=settings)
    except HTTPException as exc:
        detail = exc.detail if isinstance(exc.detail, dict) else {"message": str(exc.detail), "problems": []}
        context = {"error": detail, "filename": None}
        return templates.TemplateResponse(request, "_upload_result.html", context, status_code=exc.status_code)
    url = f"/datasets/{dataset.id}"
    return Response(status_code=204, headers={"HX-Redirect": url}) if is_htmx(request) else RedirectResponse(url, 303)


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse, include_in_schema=False)
def dataset_page(
    request: Request, dataset_id: str, session: SessionDep, base_model: str = "", max_seq_length: str = ""
) -> HTMLResponse:
    """A dataset as the model sees it: length histogram against max_seq_length, trained tokens highlighted."""
    dataset = lookup_dataset(session, dataset_id)
    description, error = dataset.description or {}, None
    if base_model or max_seq_length:
        try:
            length = int(max_seq_length or description.get("max_seq_length", 256))
            description = _describe(
                Path(dataset.path), dataset.filename, base_model or description["base_model"], length
            )
            description["base_model"] = base_model or (dataset.description or {}).get("base_model")
        except (HTTPException, ValueError, ValidationError) as exc:
            error = exc.detail if isinstance(exc, HTTPException) else str(exc)
    context = {"dataset": dataset, "d": description, "error": error}
    return templates.TemplateResponse(request, "dataset.html", context)


def dataset_choices(session: SessionDep) -> list[tuple[str, str]]:
    """(path, label) of every dataset the new-run form can offer: the samples and the uploads."""
    choices = [(str(SAMPLE_DATASET_DIR / "train.jsonl"), "sample: Taiwanese addresses (train)")]
    choices += [(d.path, f"{d.name} ({d.rows} rows)") for d in datasets.list_datasets(session=session)]
    return choices
