"""Hostile uploads cost seconds and a bounded amount of memory, against the real stack.

A body past the upload limit is refused while it arrives, with no file anywhere ever larger than the limit;
a 50 MB single-row JSONL file and a Parquet bomb are refused by the inspector in seconds, its memory (the
worker process and its children, measured from outside) growing by far less than 512 MB.
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from app.processes import free_port
from tests.conftest import Stack
from tests.processes import Processes

STACK_ENV = {"LORADECK_MAX_UPLOAD_BYTES": str(128 * 1024**2)}
MIB = 1024**2


class Largest:
    """Polls every file under some directories, keeping the largest size any of them ever had."""

    def __init__(self, *roots: Path) -> None:
        self.roots, self.largest, self.where = roots, 0, ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Largest:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for root in self.roots:
                for directory, _, names in os.walk(root):
                    for name in names:
                        try:
                            size = os.stat(os.path.join(directory, name)).st_size
                        except OSError:
                            continue
                        if size > self.largest:
                            self.largest, self.where = size, os.path.join(directory, name)
            time.sleep(0.002)


class PeakMemory:
    """The largest proportional memory (PSS) of a process and all its children, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.baseline = self.peak = self._now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _now(self) -> int:
        total = 0
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                total += process.memory_full_info().pss
            except psutil.Error:  # a child that just ended
                continue
        return total

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._now())
            time.sleep(0.02)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def _raw_upload(port: int, body_size: int, *, chunked: bool) -> tuple[int, int, str]:
    """POST a multipart upload of `body_size` bytes of JSONL over a raw socket, stopping as soon as the server
    answers; (status, bytes of the file sent, body of the answer)."""
    boundary = "loradeckboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(head) + body_size + len(tail)}"
    request = (
        f"POST /api/v1/datasets HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{length}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()
    line = json.dumps({"text": "a" * 1000}).encode() + b"\n"
    piece = line * (MIB // len(line))
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request)

        def send(data: bytes) -> None:
            sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)

        try:
            if not select.select([sock], [], [], 0.5)[0]:
                send(head)
                while sent < body_size and not select.select([sock], [], [], 0)[0]:
                    send(piece)
                    sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: read what it said
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, sent, answer.decode(errors="replace")


@pytest.fixture
def small_limit_web(loradeck_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The web app alone (an upload past the limit never reaches a worker), with a 10 MiB upload limit and a
    temporary directory of its own to watch."""
    temporary = tmp_path / "web-tmp"
    temporary.mkdir()
    port = free_port()
    env = {**os.environ, "LORADECK_MAX_UPLOAD_BYTES": str(10 * MIB), "TMPDIR": str(temporary)}
    processes = Processes(tmp_path, env)
    try:
        processes.start_web(port)
        yield port, temporary
    finally:
        processes.close(timeout=20)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_150_mb_upload_is_refused_while_it_arrives(
    small_limit_web: tuple[int, Path], loradeck_env: dict[str, str], chunked: bool
) -> None:
    port, temporary = small_limit_web
    data_dir = Path(loradeck_env["LORADECK_DATA_DIR"])
    with Largest(temporary, data_dir) as largest:
        status, sent, answer = _raw_upload(port, 150 * MIB, chunked=chunked)
    assert status == 413 and ("upload limit" in answer or "larger than" in answer), answer
    assert largest.largest <= 10 * MIB, f"{largest.where} reached {largest.largest} bytes"
    assert sent <= 20 * MIB  # refused as the bytes arrived, not after all 150 MB
    if not chunked:
        assert sent == 0  # refused by its Content-Length before a byte of the body
    listed = httpx.get(f"http://127.0.0.1:{port}/api/v1/datasets").json()
    assert listed == []
    assert not list((data_dir / "datasets").glob("*")), "nothing is stored"


def _upload(stack: Stack, name: str, content: bytes) -> httpx.Response:
    with httpx.Client(base_url=stack.url, timeout=120) as client:
        return client.post("/api/v1/datasets", files={"file": (name, content)})


@pytest.fixture(scope="module")
def warm_inspector(stack: Stack) -> Stack:
    """One good upload first: the inspector's forkserver is up, so what is measured is the file's cost alone."""
    rows = b"".join(json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}).encode() + b"\n" for i in range(20))
    assert _upload(stack, "good.jsonl", rows).status_code == 201
    return stack


def _refused_in_bounds(stack: Stack, name: str, content: bytes) -> str:
    with PeakMemory(stack.pids["inspector"]) as memory:
        started = time.monotonic()
        response = _upload(stack, name, content)
        elapsed = time.monotonic() - started
    assert response.status_code == 422, response.text
    assert elapsed < 10, f"refused after {elapsed:.1f} s"
    assert memory.growth < 512 * MIB, f"the inspector grew by {memory.growth / MIB:.0f} MiB"
    assert len(list((stack.data_dir / "datasets").glob("*"))) == 1  # the warm-up's file only: nothing stored
    return str(response.json()["detail"])


def test_a_50_mb_single_row_is_refused_in_seconds(warm_inspector: Stack) -> None:
    row = json.dumps({"prompt": "x", "completion": "y" * (50 * 1000**2)}).encode() + b"\n"
    detail = _refused_in_bounds(warm_inspector, "one-row.jsonl", row)
    assert "line 1" in detail and "LORADECK_MAX_ROW_BYTES" in detail, detail


def test_a_parquet_bomb_is_refused_in_seconds(warm_inspector: Stack, tmp_path: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    # One million rows of the same 1000-character text: a dictionary of one value and run-length indices.
    text = pa.DictionaryArray.from_arrays(pa.array(np.zeros(1_000_000, dtype=np.int32)), pa.array(["a" * 1000]))
    path = tmp_path / "bomb.parquet"
    pq.write_table(pa.table({"text": text}), path, row_group_size=1_000_000, compression="zstd")
    assert path.stat().st_size < 1024**2  # a small file that decodes to 1 GB
    detail = _refused_in_bounds(warm_inspector, "bomb.parquet", path.read_bytes())
    assert "decodes to more than" in detail and "LORADECK_INSPECT_MEMORY_MB" in detail, detail


def test_rows_past_the_cap_are_named_by_line_and_the_rest_still_checked(warm_inspector: Stack) -> None:
    good = json.dumps({"prompt": "p", "completion": "c"}).encode() + b"\n"
    long_row = json.dumps({"prompt": "p", "completion": "c" * (2 * MIB)}).encode() + b"\n"
    response = _upload(warm_inspector, "mixed.jsonl", good + long_row + good + b"not json\n")
    assert response.status_code == 422
    problems = response.json()["detail"]["problems"]
    assert problems[0].startswith("mixed.jsonl line 2: longer than the 1.0 MiB a row may be"), problems
    assert problems[1].startswith("mixed.jsonl line 4: invalid JSON"), problems
