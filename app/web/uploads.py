"""Request bodies, bounded while their bytes arrive.

`BodyLimitMiddleware` refuses a body past its limit at the ASGI level: by its Content-Length before a byte is
read, else by a running count. A dataset upload may be `max_upload_bytes` plus a little for the form's other
fields; any other request 1 MiB. `read_upload` then parses the multipart form itself and writes the file
straight into the datasets dir while hashing and counting it, so no copy lands in a temporary directory and
no file on disk ever grows past the limit.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings, get_settings
from app.datasets import Upload, UploadRefused, UploadTooLarge, clean_filename
from app.schemas import MAX_SEQ_LENGTH, MIN_SEQ_LENGTH
from app.web.openai_errors import refusal_body

UPLOAD_PATHS = ("/api/v1/datasets", "/datasets", "/v1/files")
FORM_ALLOWANCE = 1024**2  # the multipart framing and the upload form's few small fields
MAX_BODY_BYTES = 1024**2  # any other request: a RunSpec, a form, a prompt
MAX_FIELD_BYTES = 64 * 1024


def body_limit(scope: Scope, settings: Settings) -> int:
    if scope["method"] == "POST" and scope["path"].rstrip("/") in UPLOAD_PATHS:
        return settings.max_upload_bytes + FORM_ALLOWANCE
    return MAX_BODY_BYTES


def too_large(scope: Scope, settings: Settings) -> str:
    if body_limit(scope, settings) != MAX_BODY_BYTES:
        mib = settings.max_upload_bytes / 1024**2
        return f"file: larger than the {mib:,.0f} MiB upload limit (LORADECK_MAX_UPLOAD_BYTES)"
    return f"the request body is larger than the {MAX_BODY_BYTES / 1024**2:,.0f} MiB this server accepts here"


class BodyLimitMiddleware:
    """413 for a body past its limit, by Content-Length at once, else as soon as the count passes it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        limit = body_limit(scope, settings)
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await _refuse(send, scope["path"], too_large(scope, settings))
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # FastAPI re-raises an HTTPException from here; Starlette answers it
                    raise HTTPException(413, too_large(scope, settings))
            return message

        await self.app(scope, counted, send)


async def _refuse(send: Send, path: str, message: str) -> None:
    body = refusal_body(path, 413, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": [*headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class DatasetSink:
    """A file-like target for the uploaded file: a temporary file in the datasets dir, hashed and counted,
    that refuses to grow past the upload limit."""

    def __init__(self, settings: Settings, filename: str) -> None:
        _, self.suffix = clean_filename(filename)  # a wrong type is refused before a byte is stored
        self.limit = settings.max_upload_bytes
        settings.datasets_dir.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=settings.datasets_dir, prefix=".upload-", suffix=self.suffix)
        self.path, self.out = Path(name), os.fdopen(handle, "wb")
        self.digest, self.size = hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise UploadTooLarge(
                f"file: larger than the {self.limit / 1024**2:,.0f} MiB upload limit (LORADECK_MAX_UPLOAD_BYTES)"
            )
        self.digest.update(data)
        return self.out.write(data)

    def seek(self, *_: Any) -> int:
        return 0

    def close(self) -> None:
        self.out.close()


class _BoundedParser(MultiPartParser):
    """Starlette's multipart parser, with the file written to a DatasetSink instead of a spooled temp file."""

    def __init__(self, request: Request, settings: Settings) -> None:
        super().__init__(request.headers, request.stream(), max_files=1, max_fields=16, max_part_size=MAX_FIELD_BYTES)
        self.settings = settings
        self.sink: DatasetSink | None = None

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        part = self._current_part
        if part.file is not None:
            if part.field_name != "file" or self.sink is not None:
                raise UploadRefused("send one dataset file, in the multipart field `file`")
            self.sink = DatasetSink(self.settings, part.file.filename or "")
            part.file = UploadFile(file=self.sink, filename=part.file.filename)  # type: ignore[arg-type]


async def read_upload(request: Request, settings: Settings) -> Upload:
    """Parse a multipart upload, the file straight to the datasets dir; UploadRefused says what is wrong."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UploadRefused("file: send the dataset as multipart/form-data, the file in the field `file`")
    parser = _BoundedParser(request, settings)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        _discard(parser.sink)
        raise UploadRefused(f"the form could not be read: {exc.message}") from exc
    except BaseException:
        _discard(parser.sink)
        raise
    sink = parser.sink
    if sink is None:
        raise UploadRefused("file: Field required (send the dataset file in the multipart field `file`)")
    sink.close()
    if sink.size == 0:
        sink.path.unlink(missing_ok=True)
        raise UploadRefused("file: the file is empty")
    fields = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    filename = next((value.filename or "" for key, value in form.multi_items() if not isinstance(value, str)), "")
    return Upload(sink.path, filename, sink.digest.hexdigest(), sink.size, sink.suffix, fields)


def _discard(sink: DatasetSink | None) -> None:
    if sink is not None:
        sink.close()
        sink.path.unlink(missing_ok=True)


def multipart_openapi(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    """An upload route's request body as OpenAPI documents it: a multipart form (FastAPI cannot see the fields of a
    body the route streams itself)."""
    schema = {"type": "object", "required": required, "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


UPLOAD_OPENAPI = multipart_openapi(
    ["file"],
    {
        "file": {"type": "string", "format": "binary", "description": "JSONL, CSV or Parquet."},
        "name": {"type": "string", "maxLength": 200, "description": "A name; empty: the file's."},
        "base_model": {"type": "string", "description": "Whose tokenizer counts the tokens."},
        "max_seq_length": {"type": "integer", "minimum": MIN_SEQ_LENGTH, "maximum": MAX_SEQ_LENGTH, "default": 256},
    },
)
