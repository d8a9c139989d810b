"""OpenAI's API under `/v1`, for scripts written against the `openai` SDK: point `base_url` at
`http://<loradeck>/v1`. Files today (as loradeck's datasets); the shapes are those of the SDK's own types, the
errors OpenAI's (app.web.openai_errors). Host, CSRF and login rules are the rest of the app's
(app.web.security): the API token that opens `/api/v1` is the `api_key` here."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from app.errors import InputTooLarge, InvalidInput
from app.services import openai_files
from app.web.deps import SessionDep, SettingsDep
from app.web.openai_errors import OpenAIError, domain_message, leading_field
from app.web.uploads import multipart_openapi, read_upload

router = APIRouter(prefix="/v1", tags=["openai"])

FILE_UPLOAD_OPENAPI = multipart_openapi(
    ["file", "purpose"],
    {
        "file": {"type": "string", "format": "binary", "description": "JSONL, one row a line."},
        "purpose": {"type": "string", "enum": list(openai_files.PURPOSES)},
    },
)


def file_list(page: openai_files.Page) -> dict[str, Any]:
    data = [openai_files.file_object(dataset) for dataset in page.files]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": page.has_more,
    }


@router.post("/files", openapi_extra=FILE_UPLOAD_OPENAPI)
async def create_file(request: Request, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    """Upload a JSONL file with purpose `fine-tune`: every row is checked (bad rows named by line) and the file
    is described as a loradeck dataset; the same content uploaded twice is one file."""
    upload = await read_upload(request, settings)
    try:
        dataset = await run_in_threadpool(openai_files.create_file, session=session, settings=settings, upload=upload)
    except InputTooLarge:
        raise
    except InvalidInput as exc:
        message = domain_message(exc)
        raise OpenAIError(400, message, param=leading_field(message) or "file") from exc
    return openai_files.file_object(dataset)


@router.get("/files")
def list_files(
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=openai_files.MAX_LIST)] = openai_files.MAX_LIST,
    order: openai_files.Order = "desc",
    purpose: str | None = None,
) -> dict[str, Any]:
    """Files, newest first unless `order=asc`; `after` a file id and `limit` page through them."""
    page = openai_files.list_files(session=session, after=after, limit=limit, order=order, purpose=purpose)
    return file_list(page)


@router.get("/files/{file_id}")
def retrieve_file(file_id: str, session: SessionDep) -> dict[str, Any]:
    return openai_files.file_object(openai_files.get_file(session=session, file=file_id))


@router.get("/files/{file_id}/content", response_class=FileResponse)
def file_content(file_id: str, session: SessionDep, settings: SettingsDep) -> FileResponse:
    """The file's bytes as uploaded."""
    dataset, path = openai_files.content_path(session=session, settings=settings, file=file_id)
    return FileResponse(path, media_type="application/octet-stream", filename=dataset.filename)


@router.delete("/files/{file_id}")
def delete_file(file_id: str, session: SessionDep) -> dict[str, Any]:
    return openai_files.delete_file(session=session, file=file_id)
