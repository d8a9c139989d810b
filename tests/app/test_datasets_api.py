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


def _jsonl(*rows: object) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def test_a_bad_preference_file_is_refused_by_line_and_nothing_is_stored(stack: Stack) -> None:
    client = stack.client()
    before = (client.get("/api/v1/datasets").json(), _files(stack))
    pair = {"prompt": "2+2=", "chosen": "4", "rejected": "5"}
    data = _jsonl(pair, {**pair, "rejected": "4"}, {"prompt": "2+2=", "chosen": "4"}, pair)

    response = client.post("/api/v1/datasets", files={"file": ("pairs.jsonl", data, "text/plain")})

    assert response.status_code == 422
    assert response.json()["detail"] == {
        "message": "pairs.jsonl has 2 bad row(s); nothing was stored",
        "problems": [
            'pairs.jsonl line 2: "chosen" and "rejected" are the same answer; '
            "a pair teaches nothing unless they differ",
            'pairs.jsonl line 3: "rejected" is missing; a preference row needs "prompt", "chosen" and "rejected" '
            '(or OpenAI\'s "input", "preferred_output" and "non_preferred_output")',
        ],
    }
    assert (client.get("/api/v1/datasets").json(), _files(stack)) == before


def test_an_openai_preference_file_is_stored_as_pairs_and_its_page_shows_prompt_chosen_rejected(stack: Stack) -> None:
    client = stack.client()
    row = {
        "input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
        "preferred_output": [{"role": "assistant", "content": "Paris"}],
        "non_preferred_output": [{"role": "assistant", "content": "London"}],
    }

    response = client.post("/api/v1/datasets", files={"file": ("openai.jsonl", _jsonl(row, row), "text/plain")})

    assert response.status_code == 201, response.text
    dataset = response.json()
    assert (dataset["shape"], dataset["rows"]) == ("preference", 2)
    example = dataset["description"]["examples"][0]
    assert "Capital of France?" in "".join(s["text"] for s in example["segments"])
    assert [(a["name"], [s["text"] for s in a["segments"] if s["trained"]]) for a in example["answers"]] == [
        ("chosen", ["Paris</s>"]),
        ("rejected", ["London</s>"]),
    ]
    assert set(dataset["description"]["parts"]) == {"prompt", "chosen", "rejected"}
    page = client.get(f"/datasets/{dataset['id']}").text
    assert "prompt/chosen/rejected" in page and 'id="trains">trains: dpo, orpo, kto<' in page
    assert "<mark>Paris&lt;/s&gt;</mark>" in page and "<mark>London&lt;/s&gt;</mark>" in page
    listing = client.get("/datasets").text
    assert "prompt/chosen/rejected" in listing
