"""The streamed tar archive: exact size up front, same bytes every time, and a valid tar."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from app.archive import describe_tree, list_files, tar_size, tar_stream


def _tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 41)  # not a multiple of 512
    (root / "empty.txt").write_bytes(b"")


def test_archive_is_a_tar_of_the_files_with_the_announced_size(tmp_path: Path) -> None:
    _tree(tmp_path)
    files = list_files(tmp_path)
    data = b"".join(tar_stream(tmp_path, files, "run-merged"))
    assert len(data) == tar_size(tmp_path, files, "run-merged")
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        names = archive.getnames()
        assert names == ["run-merged/config.json", "run-merged/empty.txt", "run-merged/sub/weights.bin"]
        member = archive.extractfile("run-merged/sub/weights.bin")
        assert member is not None and member.read() == (tmp_path / "sub" / "weights.bin").read_bytes()


def test_describe_tree_gives_file_checksums_and_the_archive_checksum(tmp_path: Path) -> None:
    _tree(tmp_path)
    described = describe_tree(tmp_path, "x")
    by_name = {entry["name"]: entry for entry in described["files"]}
    assert by_name["config.json"]["sha256"] == hashlib.sha256(b'{"a": 1}').hexdigest()
    archive = b"".join(tar_stream(tmp_path, list_files(tmp_path), "x"))
    assert described["archive_sha256"] == hashlib.sha256(archive).hexdigest()
    assert described["archive_size"] == len(archive)


def test_links_are_left_out(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "escape").symlink_to("/etc/passwd")
    assert "escape" not in list_files(tmp_path)
