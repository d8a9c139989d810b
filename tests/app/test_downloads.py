"""Downloads over real HTTP (uvicorn on loopback): by artifact id only, inside the data dir only, and an
interrupted download resumes with a Range request to the right sha256 — for one file and for the archive."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import httpx
import pytest

from app.archive import describe_tree
from app.models import Artifact, ArtifactKind, ArtifactStatus, Run


@pytest.fixture
def artifact(loradeck_env: dict[str, str]) -> Artifact:
    """A ready merged-model artifact with a 3 MB weights file, as the merge task leaves it."""
    from app.config import get_settings
    from app.db import get_sessionmaker

    root = get_settings().runs_dir / "run1" / "merged"
    root.mkdir(parents=True)
    (root / "model.safetensors").write_bytes(os.urandom(3_000_000))
    (root / "config.json").write_text('{"model_type": "llama"}')
    tree = describe_tree(root, prefix="run1-merged")
    with get_sessionmaker()() as session:
        session.add(Run(id="run1", name="r", spec={"method": "qlora"}, status="succeeded"))
        record = Artifact(
            id="art1",
            run_id="run1",
            kind=ArtifactKind.merged,
            status=ArtifactStatus.ready,
            path="run1/merged",
            size_bytes=tree["archive_size"],
            sha256=tree["archive_sha256"],
            files=tree["files"],
        )
        session.add(record)
        session.commit()
    return record


def _interrupted_then_resumed(client: httpx.Client, url: str, stop_after: int) -> bytes:
    """Read part of the body, drop the connection, then ask for the rest with Range."""
    received = b""
    with client.stream("GET", url) as response:
        assert response.status_code == 200 and response.headers["accept-ranges"] == "bytes"
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) >= stop_after:
                break  # the connection closes here, mid-body, like a dropped download
    received = received[:stop_after]
    rest = client.get(url, headers={"Range": f"bytes={len(received)}-"})
    assert rest.status_code == 206
    assert rest.headers["content-range"].startswith(f"bytes {len(received)}-")
    return received + rest.content


def test_single_file_download_resumes_with_range(web_url: str, artifact: Artifact) -> None:
    url = f"{web_url}/api/v1/artifacts/art1/download?file=model.safetensors"
    with httpx.Client(timeout=30) as client:
        body = _interrupted_then_resumed(client, url, stop_after=1_234_567)
    expected = next(f["sha256"] for f in artifact.files or [] if f["name"] == "model.safetensors")
    assert hashlib.sha256(body).hexdigest() == expected


def test_archive_download_resumes_with_range(web_url: str, artifact: Artifact) -> None:
    url = f"{web_url}/api/v1/artifacts/art1/download"
    with httpx.Client(timeout=30) as client:
        whole = client.get(url)
        assert whole.headers["etag"] == f'"{artifact.sha256}"'
        assert int(whole.headers["content-length"]) == artifact.size_bytes
        body = _interrupted_then_resumed(client, url, stop_after=2_000_001)
        stale = client.get(url, headers={"Range": "bytes=10-", "If-Range": '"not-the-same"'})
        assert stale.status_code == 200 and len(stale.content) == artifact.size_bytes
        beyond = client.get(url, headers={"Range": f"bytes={artifact.size_bytes}-"})
        assert beyond.status_code == 416
    assert hashlib.sha256(body).hexdigest() == artifact.sha256 == hashlib.sha256(whole.content).hexdigest()


def test_downloads_stay_inside_the_artifact(web_url: str, artifact: Artifact, loradeck_env: dict[str, str]) -> None:
    from app.config import get_settings

    secret = Path(loradeck_env["LORADECK_DATA_DIR"]) / "loradeck.db"
    root = get_settings().runs_dir / "run1" / "merged"
    (root / "link").symlink_to(secret)
    with httpx.Client(base_url=web_url, timeout=30) as client:
        for name in ("../../../loradeck.db", "/etc/passwd", "link", "missing.bin", "model.safetensors\x00.txt"):
            response = client.get("/api/v1/artifacts/art1/download", params={"file": name})
            assert response.status_code == 404, name
        with tarfile.open(fileobj=io.BytesIO(client.get("/api/v1/artifacts/art1/download").content)) as archive:
            assert archive.getnames() == ["run1-merged/config.json", "run1-merged/model.safetensors"]
        assert client.get("/api/v1/artifacts/nope/download").status_code == 404


def test_a_pending_artifact_cannot_be_downloaded(web_url: str, artifact: Artifact) -> None:
    from app.db import get_sessionmaker

    with get_sessionmaker()() as session:
        session.add(Artifact(id="art2", run_id="run1", kind=ArtifactKind.merged, status=ArtifactStatus.running))
        session.commit()
    response = httpx.get(f"{web_url}/api/v1/artifacts/art2/download", timeout=30)
    assert response.status_code == 409 and "not ready" in response.json()["detail"]
