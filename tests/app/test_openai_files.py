"""OpenAI's Files API under /v1, driven by the official `openai` SDK, unchanged, against uvicorn and a real inspect
worker: the bundled sample uploaded as chat rows and as prompt/completion rows, listed, paged, read back and
deleted; bad files refused in OpenAI's error shape naming the line; with login on, a key from `loradeck keys create`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app.config import SAMPLE_DATASET_DIR
from app.processes import free_port
from app.web.security import hash_password
from tests.conftest import stack_env
from tests.openai_sdk import chat_rows, client, jsonl
from tests.processes import REPO, Processes

ROWS = [json.loads(line) for line in (SAMPLE_DATASET_DIR / "train.jsonl").read_text().splitlines()[:24]]
UPLOAD_LIMIT = 1024**2


@dataclass
class Servers:
    url: str  # loopback, no login: any key is accepted
    login_url: str  # the same data, with login on
    key: str  # an API key for it


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, redis_url: str, module_database_url: str) -> Iterator[Servers]:
    """Two web apps on one data dir and database, one of them with login on, and an inspect worker."""
    root = tmp_path_factory.mktemp("openai")
    port, login_port = free_port(), free_port()
    env = stack_env(root / "data", redis_url, module_database_url, port) | {
        "LORADECK_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)
    }
    login_env = env | {
        "LORADECK_REQUIRE_LOGIN": "true",
        "LORADECK_ADMIN_PASSWORD_HASH": hash_password("admin password"),
    }
    processes, login = Processes(root, env), Processes(root, login_env)
    processes.migrate()
    create = [sys.executable, "-m", "app.cli", "keys", "create", "--name", "files"]
    made = subprocess.run(create, env=login_env, cwd=REPO, capture_output=True, text=True, check=True)
    key = re.search(r"ldk-\S+", made.stdout)
    assert key, made.stdout
    try:
        processes.start_worker("--queues", "inspect", log="worker.log")
        processes.start_web(port, log="web.log")
        login.start_web(login_port, log="web.log")
        yield Servers(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{login_port}", key.group(0))
    finally:
        login.close()
        processes.close()


def test_files_round_trip_through_the_sdk(servers: Servers, tmp_path: Path) -> None:
    sdk = client(servers.url)
    chat = tmp_path / "train_chat.jsonl"
    chat.write_bytes(jsonl(chat_rows(ROWS)))
    with chat.open("rb") as handle:  # as a script uploads it
        chat_file = sdk.files.create(file=handle, purpose="fine-tune")
    plain = jsonl(ROWS)
    plain_file = sdk.files.create(file=("train.jsonl", plain), purpose="fine-tune")

    assert chat_file.id.startswith("file-") and chat_file.object == "file"
    assert (chat_file.filename, chat_file.bytes, chat_file.purpose, chat_file.status) == (
        "train_chat.jsonl", chat.stat().st_size, "fine-tune", "processed"
    )  # fmt: skip
    assert plain_file.bytes == len(plain) and plain_file.created_at >= chat_file.created_at
    assert sdk.files.retrieve(chat_file.id) == chat_file
    assert sdk.files.content(plain_file.id).read() == plain
    # The dashboard sees the same files as datasets, checked and described.
    datasets = {d["id"]: d for d in httpx.get(servers.url + "/api/v1/datasets").json()}
    assert datasets[chat_file.id.removeprefix("file-")]["shape"] == "messages"
    assert datasets[plain_file.id.removeprefix("file-")]["rows"] == len(ROWS)
    listed = [f.id for f in sdk.files.list(purpose="fine-tune")]
    assert {chat_file.id, plain_file.id} <= set(listed) and listed.index(plain_file.id) < listed.index(chat_file.id)

    deleted = sdk.files.delete(chat_file.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (chat_file.id, "file", True)
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.files.retrieve(chat_file.id)
    assert missing.value.body == {
        "message": f"No such File object: {chat_file.id}", "type": "invalid_request_error", "param": None, "code": None
    }  # fmt: skip
    with pytest.raises(openai.NotFoundError):
        sdk.files.content(chat_file.id)
    with pytest.raises(openai.NotFoundError):
        sdk.files.delete("file-doesnotexist")
    assert chat_file.id not in [f.id for f in sdk.files.list()]


def test_pages_follow_after_and_limit(servers: Servers) -> None:
    sdk = client(servers.url)
    made = [sdk.files.create(file=(f"page{i}.jsonl", jsonl(ROWS[i : i + 2])), purpose="fine-tune").id for i in range(3)]
    first = sdk.files.list(limit=2, order="asc")
    assert len(first.data) == 2 and first.has_more is True
    every = [f.id for f in sdk.files.list(limit=2, order="asc")]  # the SDK follows `after` page by page
    assert every[-3:] == made
    newest = [f.id for f in sdk.files.list(limit=3).data]
    assert newest == made[::-1]
    assert sdk.files.list(purpose="batch").data == []
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.files.list(limit=0)
    assert bad.value.param == "limit"


def test_a_broken_line_3_is_refused_naming_it_and_nothing_is_stored(servers: Servers) -> None:
    sdk = client(servers.url)
    before = [f.id for f in sdk.files.list()]
    rows = [json.dumps(row) for row in chat_rows(ROWS[:4])]
    rows[2] = rows[2][:-3]  # line 3 cut short
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.files.create(file=("broken.jsonl", "\n".join(rows).encode()), purpose="fine-tune")
    error = refused.value
    assert error.param == "file" and error.type == "invalid_request_error"
    assert error.body["message"].startswith("broken.jsonl has 1 bad row(s); nothing was stored: broken.jsonl line 3:")
    assert [f.id for f in sdk.files.list()] == before


def test_what_loradeck_cannot_train_on_yet_is_refused_by_line(servers: Servers) -> None:
    sdk = client(servers.url)
    good = chat_rows(ROWS[:3])
    tools = good[1] | {"tools": [{"type": "function", "function": {"name": "parse"}}]}
    weighted_user = json.loads(json.dumps(good[2]))
    weighted_user["messages"][1]["weight"] = 0
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.files.create(file=("tools.jsonl", jsonl([good[0], tools, weighted_user])), purpose="fine-tune")
    message = refused.value.body["message"]
    assert refused.value.param == "file"
    assert 'tools.jsonl line 2: "tools" is not supported yet' in message
    assert 'tools.jsonl line 3: "messages" turn 2: "weight" is for assistant turns only' in message


def test_weight_0_turns_are_context_and_a_row_with_nothing_to_learn_is_refused(servers: Servers) -> None:
    sdk = client(servers.url)
    rows = chat_rows(ROWS[:4])

    def two_exchanges(weight: int) -> list[dict[str, Any]]:
        """Each row after an earlier exchange (another row's) whose answer has this weight."""
        return [
            {"messages": [*earlier["messages"][:2], earlier["messages"][2] | {"weight": weight}, *row["messages"][1:]]}
            for earlier, row in zip(rows[1:] + rows[:1], rows, strict=True)
        ]

    masked, plain = two_exchanges(0), two_exchanges(1)
    files = [
        sdk.files.create(file=(f"{name}.jsonl", jsonl(data)), purpose="fine-tune")
        for name, data in (("masked", masked), ("plain", plain))
    ]
    assert [f.status for f in files] == ["processed", "processed"]
    described = {d["id"]: d["description"] for d in httpx.get(servers.url + "/api/v1/datasets").json()}
    masked_tokens, plain_tokens = (described[f.id.removeprefix("file-")]["trained_tokens"] for f in files)
    assert 0 < masked_tokens < plain_tokens

    nothing = json.loads(json.dumps(masked))
    nothing[2]["messages"][-1]["weight"] = 0
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.files.create(file=("nothing.jsonl", jsonl(nothing)), purpose="fine-tune")
    assert refused.value.param == "file"
    assert 'nothing.jsonl line 3: every assistant turn has "weight": 0' in refused.value.body["message"]


def test_wrong_purpose_and_oversized_files_are_refused(servers: Servers) -> None:
    sdk = client(servers.url)
    with pytest.raises(openai.BadRequestError) as purpose:
        sdk.files.create(file=("a.jsonl", jsonl(ROWS[:2])), purpose="assistants")
    assert purpose.value.param == "purpose" and "'fine-tune'" in purpose.value.body["message"]
    with pytest.raises(openai.APIStatusError) as large:
        sdk.files.create(file=("big.jsonl", b"x" * (2 * UPLOAD_LIMIT)), purpose="fine-tune")
    assert large.value.status_code == 413 and large.value.param == "file"
    assert "LORADECK_MAX_UPLOAD_BYTES" in large.value.body["message"]


def test_with_login_on_an_api_key_is_needed(servers: Servers) -> None:
    bare = httpx.get(servers.login_url + "/v1/files")
    assert bare.status_code == 401
    assert bare.json()["error"]["type"] == "invalid_request_error" and bare.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(servers.login_url, "sk-not-a-loradeck-key").files.list()
    sdk = client(servers.login_url, servers.key)
    made = sdk.files.create(file=("login.jsonl", jsonl(ROWS[5:8])), purpose="fine-tune")
    assert sdk.files.retrieve(made.id).filename == "login.jsonl"
    with pytest.raises(openai.AuthenticationError):
        client(servers.login_url, "sk-not-a-loradeck-key").files.delete(made.id)
    assert sdk.files.delete(made.id).deleted is True
