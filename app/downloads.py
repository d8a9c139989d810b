"""Artifact downloads: by artifact id only, every path checked to lie inside the runs directory."""

from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException
from fastapi.responses import FileResponse, StreamingResponse

from app.archive import list_files, tar_size, tar_stream
from app.config import Settings
from app.models import Artifact, ArtifactStatus


def artifact_root(artifact: Artifact, settings: Settings) -> Path:
    """The artifact's directory, resolved; refused if it is missing or leads outside the runs dir."""
    if artifact.status != ArtifactStatus.ready or not artifact.path:
        raise HTTPException(409, f"artifact {artifact.id} is {artifact.status}, not ready to download")
    runs_dir = settings.runs_dir.resolve()
    root = (runs_dir / artifact.path).resolve()
    if not root.is_relative_to(runs_dir) or not root.is_dir():
        raise HTTPException(404, f"artifact {artifact.id}'s files are missing from the data dir")
    return root


def archive_name(artifact: Artifact) -> str:
    return f"{artifact.run_id}-{artifact.kind}"


def download_response(artifact: Artifact, settings: Settings, file: str | None) -> FileResponse | StreamingResponse:
    root = artifact_root(artifact, settings)
    if file:
        # One file on its own: FileResponse answers Range requests, so a broken download resumes.
        path = (root / file).resolve()
        if not path.is_relative_to(root) or not path.is_file() or path.is_symlink():
            raise HTTPException(404, f"artifact {artifact.id} has no file {file!r}")
        return FileResponse(path, filename=path.name, media_type="application/octet-stream")
    files = list_files(root)
    prefix = archive_name(artifact)
    headers = {
        "Content-Disposition": f'attachment; filename="{prefix}.tar"',
        "Content-Length": str(tar_size(root, files, prefix)),
    }
    if artifact.sha256:
        headers["X-Checksum-Sha256"] = artifact.sha256
    return StreamingResponse(tar_stream(root, files, prefix), media_type="application/x-tar", headers=headers)
