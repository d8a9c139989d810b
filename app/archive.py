"""Artifacts on disk: per-file checksums and a deterministic, streamed tar archive.

The archive is built on the fly while it is sent (no temporary copy on disk), and it is the same
bytes every time, so its size is known up front and its sha256 can be published before download.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = tarfile.BLOCKSIZE  # 512
CHUNK = 1 << 20


def list_files(root: Path) -> list[str]:
    """Relative paths of the regular files below root, sorted; links and special files are skipped."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file() and not path.is_symlink())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT)


Segment = tuple[bytes, None] | tuple[Path, int]


def _segments(root: Path, files: list[str], prefix: str) -> Iterator[Segment]:
    """The archive as a sequence of literal bytes (headers, padding) and whole files (path, size)."""
    for name in files:
        path = root / name
        size = path.stat().st_size
        yield _header(f"{prefix}/{name}", size), None
        yield path, size
        if size % BLOCK:
            yield b"\0" * (BLOCK - size % BLOCK), None
    yield b"\0" * (2 * BLOCK), None


def _length(segment: Segment) -> int:
    data, size = segment
    return len(data) if isinstance(data, bytes) else int(size or 0)


def tar_size(root: Path, files: list[str], prefix: str) -> int:
    """Exact byte length of `tar_stream(root, files, prefix)`."""
    return sum(_length(segment) for segment in _segments(root, files, prefix))


def tar_stream(root: Path, files: list[str], prefix: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """Yield bytes [start, end) of a tar archive of `files` (relative to root), each under `prefix/`.

    The archive is the same bytes every time, so a broken download resumes with a Range request.
    """
    position = 0
    for segment in _segments(root, files, prefix):
        length = _length(segment)
        lo, hi = max(start - position, 0), length if end is None else min(end - position, length)
        position += length
        if lo >= hi:
            if end is not None and position >= end:
                return
            continue
        data, _ = segment
        if isinstance(data, bytes):
            yield data[lo:hi]
            continue
        with data.open("rb") as handle:
            handle.seek(lo)
            remaining = hi - lo
            while remaining > 0:
                chunk = handle.read(min(CHUNK, remaining))
                if not chunk:
                    raise OSError(f"{data} shrank while it was being archived")
                remaining -= len(chunk)
                yield chunk


def describe_tree(root: Path, prefix: str) -> dict[str, Any]:
    """Files with sizes and sha256, plus the size and sha256 of the archive that downloads them."""
    files = list_files(root)
    entries = [
        {"name": name, "size": (root / name).stat().st_size, "sha256": file_sha256(root / name)} for name in files
    ]
    digest = hashlib.sha256()
    for chunk in tar_stream(root, files, prefix):
        digest.update(chunk)
    return {
        "files": entries,
        "archive_size": tar_size(root, files, prefix),
        "archive_sha256": digest.hexdigest(),
    }


def archive_name(run_id: str, kind: str, details: dict[str, Any] | None = None) -> str:
    """The folder an artifact's archive unpacks into (and its download's name): `<run>-adapter`, `<run>-merged`,
    `<run>-gguf-<type>`. The worker hashes the archive under this name, the download streams it so."""
    gguf_type = (details or {}).get("type") if kind == "gguf" else None
    return f"{run_id}-{kind}" + (f"-{gguf_type}" if gguf_type else "")
