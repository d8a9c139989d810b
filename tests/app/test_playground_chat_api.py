"""The playground's conversation over the API: `messages` instead of `prompt`, bounded, refused with the field named.

Answers come from a generate worker (tests/browser/test_playground_chat.py runs one, and
tests/worker/test_playground_prompts.py checks its formatting); here the web's own checks, made before anything
is queued.
"""

# ruff: noqa: E501  (tables of cases read best one case a line)
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import SAMPLE_DATASET_DIR

SYSTEM = {"role": "system", "content": "You answer in one word."}
ASK = {"role": "user", "content": "Capital of France?"}
ANSWER = {"role": "assistant", "content": "Paris"}
AGAIN = {"role": "user", "content": "And of Japan?"}
LONG = [{"role": "user", "content": "x" * 20_000}, {"role": "assistant", "content": "y" * 20_000}]


@pytest.fixture
def client(loradeck_env: dict[str, str]) -> Iterator[TestClient]:
    from app.main import app

    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def chat_run(client: TestClient, tmp_path: Path) -> dict[str, Any]:
    """A queued run on a messages dataset: its conversation requests pass every check but the adapter's."""
    dataset = tmp_path / "chat.jsonl"
    dataset.write_text(json.dumps({"messages": [SYSTEM, ASK, ANSWER]}) + "\n", encoding="utf-8")
    reply = client.post("/api/v1/runs", json={"name": "chat", "dataset": str(dataset), "max_steps": 5})
    assert reply.status_code == 201, reply.text
    return dict(reply.json())


def _ask(client: TestClient, run_id: str, **body: Any) -> tuple[int, str]:
    reply = client.post("/api/v1/playground", json={"run_id": run_id} | body)
    return reply.status_code, json.dumps(reply.json(), ensure_ascii=False)


# (what, request body, words the 422 must hold: the field and what to do)
REFUSED: list[tuple[str, dict[str, Any], list[str]]] = [
    ("both prompt and messages", {"prompt": "hi", "messages": [ASK]}, ["prompt, messages: give exactly one"]),
    ("neither prompt nor messages", {}, ["prompt, messages: give exactly one"]),
    ("an unknown role", {"messages": [{"role": "bot", "content": "hi"}]}, ['"messages", 0, "role"', "'system', 'user' or 'assistant'"]),
    ("a turn without content", {"messages": [{"role": "user"}]}, ['"messages", 0, "content"', "Field required"]),
    ("an unknown key in a turn", {"messages": [ASK | {"name": "x"}]}, ['"messages", 0, "name"', "Extra inputs"]),
    ("messages that are not a list", {"messages": "hi"}, ['"messages"', "valid list"]),
    ("a system turn later on", {"messages": [ASK, ANSWER, SYSTEM, AGAIN]}, ["turn 3 is system: only the first turn may be system"]),
    ("two user turns in a row", {"messages": [ASK, AGAIN]}, ["turn 2 is user: expected a assistant turn"]),
    ("an assistant turn first", {"messages": [ANSWER, ASK]}, ["turn 1 is assistant: expected a user turn"]),
    ("no user turn to answer", {"messages": [SYSTEM, ASK, ANSWER]}, ["the last turn must be the user's"]),
    ("a system prompt alone", {"messages": [SYSTEM]}, ["the last turn must be the user's"]),
    ("an empty user turn", {"messages": [{"role": "user", "content": " \n"}]}, ["content: a user turn cannot be empty"]),
    ("hidden text in the system prompt", {"messages": [{"role": "system", "content": "a\u202eb"}, ASK]}, ["content: contains invisible control characters (U+202E)"]),
    ("a NUL in a user turn", {"messages": [{"role": "user", "content": "a\x00b"}]}, ["content: contains invisible control characters (U+0000)"]),
    ("too many turns", {"messages": [ASK, ANSWER] * 20 + [AGAIN]}, ["at most 40 turns in one conversation, not 41: start a new chat"]),
    ("a turn too long", {"messages": [{"role": "user", "content": "x" * 20_001}]}, ['"messages", 0, "content"', "at most 20000 characters"]),
    ("a conversation too long", {"messages": [*LONG, *LONG, {"role": "user", "content": "z" * 20_000}]}, ["messages: the conversation holds 100,000 characters, more than the 60,000"]),
    ("a conversation with chat off", {"messages": [ASK], "chat": False}, ["chat: a conversation (messages) is always formatted"]),
    ("base answers without messages", {"prompt": "hi", "base_answers": []}, ["base_answers: only with messages"]),
    ("base answers that miss one", {"messages": [ASK, ANSWER, AGAIN], "base_answers": []}, ["base_answers: give one per assistant turn of messages (1), not 0"]),
]  # fmt: skip


def test_a_conversation_request_is_refused_naming_the_field_and_what_to_do(
    client: TestClient, chat_run: dict[str, Any]
) -> None:
    failures = []
    for what, body, words in REFUSED:
        status, text = _ask(client, chat_run["id"], **body)
        if status != 422 or not all(word in text for word in words):
            failures.append(f"{what}: {status} {text[:400]}")
    assert failures == [], "\n".join(failures)


def test_a_conversation_passes_the_checks_for_a_run_trained_on_messages_only(
    client: TestClient, chat_run: dict[str, Any]
) -> None:
    conversation = {"messages": [SYSTEM, ASK, ANSWER, AGAIN], "base_answers": ["Lyon"]}
    # Well formed: it gets as far as the run's state (queued, so nothing answers yet), as a prompt does.
    assert _ask(client, chat_run["id"], **conversation) == _ask(client, chat_run["id"], prompt="hi")
    status, text = _ask(client, chat_run["id"], **conversation)
    assert status == 409 and "this run has no adapter" in text
    # A run on prompt/completion rows never learned a chat template: a conversation is refused, a prompt not.
    sample = client.post("/api/v1/runs", json={"dataset": str(SAMPLE_DATASET_DIR / "train.jsonl"), "max_steps": 5})
    assert sample.status_code == 201, sample.text
    status, text = _ask(client, sample.json()["id"], **conversation)
    assert status == 422, text
    assert '"loc": ["body", "messages"]' in text
    assert "this run trained on prompt/completion or text rows, not on messages: send a prompt" in text
    assert _ask(client, sample.json()["id"], prompt="hi")[0] == 409


def test_a_conversation_past_the_body_limit_is_refused_before_it_is_read(
    client: TestClient, chat_run: dict[str, Any]
) -> None:
    body = json.dumps({"run_id": chat_run["id"], "messages": [{"role": "user", "content": "x" * (2 * 1024**2)}]})
    reply = client.post("/api/v1/playground", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 413 and "larger than the 1 MiB" in reply.text


def test_the_api_docs_describe_messages(client: TestClient) -> None:
    schema = client.get("/api/v1/openapi.json").json()["components"]["schemas"]
    assert set(schema["ChatTurn"]["properties"]["role"]["enum"]) == {"system", "user", "assistant"}
    assert "conversation" in schema["PlaygroundRequest"]["properties"]["messages"]["description"]
