"""Dataset uploads through the whole stack: a worker validates every row and describes the file."""

from __future__ import annotations

import json
from pathlib import Path

from app.config import SAMPLE_DATASET_DIR
from tests.conftest import Stack


def _files(stack: Stack) -> list[str]:
    root = stack.data_dir / "datasets"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_good_upload_is_described_and_stored_once(stack: Stack) -> None:
    client = stack.client()
    data = (SAMPLE_DATASET_DIR / "eval.jsonl").read_bytes()
    response = client.post(
        "/api/v1/datasets",
        files={"file": ("addresses.jsonl", data, "application/json")},
        data={"name": "addresses", "max_seq_length": "48"},
    )
    assert response.status_code == 201, response.text
    dataset = response.json()
    description = dataset["description"]
    assert dataset["rows"] == 200 and dataset["shape"] == "prompt_completion"
    assert description["file"] == "addresses.jsonl" and description["max_seq_length"] == 48
    assert 0 < description["truncated_rows"] <= 200
    assert sum(description["histogram"]["counts"]) == 200
    trained = [seg for seg in description["examples"][0]["segments"] if seg["trained"]]
    assert trained and trained[0]["text"].startswith('{"city":')
    again = client.post("/api/v1/datasets", files={"file": ("copy.jsonl", data, "application/json")})
    assert again.json()["id"] == dataset["id"]
    assert [d["id"] for d in client.get("/api/v1/datasets").json()].count(dataset["id"]) == 1
    page = client.get(f"/datasets/{dataset['id']}").text
    assert "<mark>" in page and "addresses" in page
    assert Path(dataset["path"]).read_bytes() == data


def test_bad_rows_are_reported_by_line_and_nothing_is_stored(stack: Stack) -> None:
    client = stack.client()
    before = (client.get("/api/v1/datasets").json(), _files(stack))
    good = json.dumps({"prompt": "p", "completion": "c"})
    lines = [good, "{not json", good, json.dumps({"prompt": "p"}), json.dumps({"prompt": 3, "completion": "c"})]
    response = client.post("/api/v1/datasets", files={"file": ("bad.jsonl", "\n".join(lines).encode(), "text/plain")})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail["message"] == "bad.jsonl has 3 bad row(s); nothing was stored"
    assert [p.split(":")[0] for p in detail["problems"]] == ["bad.jsonl line 2", "bad.jsonl line 4", "bad.jsonl line 5"]
    assert (client.get("/api/v1/datasets").json(), _files(stack)) == before


def test_uploads_refused_for_type_size_and_emptiness(stack: Stack) -> None:
    client = stack.client()
    before = _files(stack)
    cases = [
        (("weights.pkl", b"\x80\x04", "application/octet-stream"), 422, "is not one of"),
        (("empty.jsonl", b"", "text/plain"), 422, "the file is empty"),
        (("huge.jsonl", b"x" * (6 * 1024**2), "text/plain"), 413, "upload limit"),
        (("../../etc/passwd.jsonl", b'{"text": "a"}\n', "text/plain"), 201, ""),
    ]
    for upload, status, message in cases:
        response = client.post("/api/v1/datasets", files={"file": upload})
        assert response.status_code == status, (upload[0], response.text)
        if message:
            assert message in response.json()["detail"]
    stored = client.get("/api/v1/datasets").json()[0]
    assert stored["filename"] == "passwd.jsonl"
    assert Path(stored["path"]).parent == stack.data_dir.resolve() / "datasets"
    assert len(_files(stack)) == len(before) + 1
