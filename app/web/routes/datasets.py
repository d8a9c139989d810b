"""Datasets: upload (streamed, size-limited, stored by content hash), validate row by row, describe."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.errors import DomainError
from app.models import Dataset
from app.schemas import MAX_SEQ_LENGTH, MIN_SEQ_LENGTH
from app.services import datasets
from app.web.deps import SessionDep, SettingsDep, is_htmx, render
from app.web.errors import detail, http_status
from app.web.uploads import UPLOAD_OPENAPI, read_upload

router = APIRouter()
SeqLength = Annotated[int | None, Query(ge=MIN_SEQ_LENGTH, le=MAX_SEQ_LENGTH)]


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


async def upload(request: Request, session: SessionDep, settings: SettingsDep) -> Dataset:
    """Read the multipart upload (bounded as it arrives), then store, check and describe it."""
    received = await read_upload(request, settings)
    dataset, _ = await run_in_threadpool(datasets.store_upload, session=session, settings=settings, upload=received)
    return dataset


@router.post("/api/v1/datasets", status_code=201, tags=["api"], openapi_extra=UPLOAD_OPENAPI)
async def create_dataset(request: Request, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Upload a JSONL, CSV or Parquet dataset (multipart: file, and optionally name, base_model and
    max_seq_length): every bad row is reported by line; a good file is described."""
    return dataset_out(await upload(request, session, settings))


@router.get("/api/v1/datasets", tags=["api"])
def list_datasets(session: SessionDep) -> list[dict[str, Any]]:
    """Uploaded datasets, newest first."""
    return [dataset_out(d) for d in datasets.list_datasets(session=session)]


@router.get("/api/v1/datasets/{dataset_id}", tags=["api"])
def get_dataset(
    dataset_id: str,
    session: SessionDep,
    settings: SettingsDep,
    base_model: str | None = None,
    max_seq_length: SeqLength = None,
) -> dict[str, Any]:
    """One dataset; with base_model or max_seq_length, described again for that tokenizer and length."""
    dataset = datasets.get_dataset(session=session, dataset_id=dataset_id)
    out = dataset_out(dataset)
    if base_model or max_seq_length:
        out["description"] = datasets.describe_again(
            settings=settings, dataset=dataset, base_model=base_model, max_seq_length=max_seq_length
        )
    return out


# --- pages


@router.get("/datasets", response_class=HTMLResponse, include_in_schema=False)
def datasets_page(request: Request, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """Upload a dataset (drag and drop) and see the ones already uploaded."""
    listed = datasets.list_datasets(session=session)
    shapes = {d.id: datasets.shape_summary(d.shape) for d in listed}
    context = {"datasets": listed, "shapes": shapes, "default_model": settings.default_base_model}
    return render(request, "datasets.html", context)


@router.post("/datasets", include_in_schema=False, response_model=None)
async def upload_form(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """The upload form: a good file opens its page; a bad one is reported row by row."""
    try:
        dataset = await upload(request, session, settings)
    except DomainError as exc:
        refusal = detail(exc)
        error = refusal if isinstance(refusal, dict) else {"message": str(exc), "problems": []}
        return render(request, "_upload_result.html", {"error": error, "filename": None}, http_status(exc))
    url = f"/datasets/{dataset.id}"
    return Response(status_code=204, headers={"HX-Redirect": url}) if is_htmx(request) else RedirectResponse(url, 303)


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse, include_in_schema=False)
def dataset_page(
    request: Request,
    dataset_id: str,
    session: SessionDep,
    settings: SettingsDep,
    base_model: str = "",
    max_seq_length: str = "",
) -> HTMLResponse:
    """A dataset as the model sees it: its shape and the objectives that train on it, length histograms against
    max_seq_length, trained tokens highlighted (a pair's prompt once, then each answer)."""
    dataset = datasets.get_dataset(session=session, dataset_id=dataset_id)
    description, error = dataset.description or {}, None
    if base_model or max_seq_length:
        try:
            length = datasets.form_int({"max_seq_length": max_seq_length}, "max_seq_length", 0) or None
            description = datasets.describe_again(
                settings=settings, dataset=dataset, base_model=base_model or None, max_seq_length=length
            )
        except DomainError as exc:
            error = detail(exc)
    context = {"dataset": dataset, "d": description, "shape": datasets.shape_summary(dataset.shape), "error": error}
    return render(request, "dataset.html", context)
