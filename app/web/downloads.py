"""Artifact downloads: by artifact id only, every path checked to lie inside the runs directory.

The whole artifact is one streamed tar (built while it is sent, no temporary copy); it is the same bytes
every time, so it answers Range requests like a file does and an interrupted download resumes.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from app.archive import archive_name as artifact_archive_name
from app.archive import list_files, tar_size, tar_stream
from app.config import Settings
from app.errors import Conflict, NotFound
from app.models import Artifact, ArtifactStatus

RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def artifact_root(artifact: Artifact, settings: Settings) -> Path:
    """The artifact's directory, resolved; refused if it is missing or leads outside the runs dir."""
    if artifact.status != ArtifactStatus.ready or not artifact.path:
        raise Conflict(f"artifact {artifact.id} is {artifact.status}, not ready to download")
    runs_dir = settings.runs_dir.resolve()
    root = (runs_dir / artifact.path).resolve()
    if not root.is_relative_to(runs_dir) or not root.is_dir():
        raise NotFound(f"artifact {artifact.id}'s files are missing from the data dir")
    return root


def archive_name(artifact: Artifact) -> str:
    return artifact_archive_name(artifact.run_id, artifact.kind, artifact.details)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a single `bytes=` range, None for the whole body; 416 when it cannot be met."""
    if not header:
        return None
    match = RANGE.match(header.strip())
    if not match or match.groups() == ("", ""):
        return None  # several ranges or a malformed header: send the whole archive
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size
    else:
        start, end = int(first), min(int(last) + 1, size) if last else size
    if start >= size or start >= end:
        message = f"range {header} is outside the archive's {size} bytes"
        raise HTTPException(416, message, {"Content-Range": f"bytes */{size}"})
    return start, end


def download_response(artifact: Artifact, settings: Settings, request: Request, file: str | None) -> Response:
    root = artifact_root(artifact, settings)
    if file:
        if "\x00" in file:  # no file name holds a NUL, and the filesystem calls refuse one
            raise NotFound(f"artifact {artifact.id} has no file {file!r}")
        # One file on its own: FileResponse answers Range requests, so a broken download resumes.
        path = (root / file).resolve()
        if not path.is_relative_to(root) or not path.is_file() or (root / file).is_symlink():
            raise NotFound(f"artifact {artifact.id} has no file {file!r}")
        return FileResponse(path, filename=path.name, media_type="application/octet-stream")
    files = list_files(root)
    prefix = archive_name(artifact)
    size = tar_size(root, files, prefix)
    etag = f'"{artifact.sha256}"' if artifact.sha256 else None
    headers = {"Content-Disposition": f'attachment; filename="{prefix}.tar"', "Accept-Ranges": "bytes"}
    if etag:
        headers |= {"ETag": etag, "X-Checksum-Sha256": artifact.sha256 or ""}
    if_range = request.headers.get("if-range")
    wanted = _byte_range(request.headers.get("range"), size) if if_range in (None, etag) else None
    if wanted is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(tar_stream(root, files, prefix), media_type="application/x-tar", headers=headers)
    start, end = wanted
    headers |= {"Content-Length": str(end - start), "Content-Range": f"bytes {start}-{end - 1}/{size}"}
    body = tar_stream(root, files, prefix, start, end)
    return StreamingResponse(body, status_code=206, media_type="application/x-tar", headers=headers)
