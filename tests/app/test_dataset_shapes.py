"""The web tells a file's shape, and whether its rows go through a chat template, from its first record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.dataset_shapes import first_row_shape, trains_with_chat

TURNS = [{"role": "user", "content": "Q"}]
ANSWER = [{"role": "assistant", "content": "A"}]
CASES = {
    "pc.jsonl": ({"prompt": "Q", "completion": "A"}, "prompt_completion", False),
    "chat.jsonl": ({"messages": [*TURNS, *ANSWER]}, "messages", True),
    "pair.jsonl": ({"prompt": "Q", "chosen": "A", "rejected": "B"}, "preference", False),
    "chat-pair.jsonl": ({"prompt": TURNS, "chosen": ANSWER, "rejected": ANSWER}, "preference", True),
    "openai.jsonl": (
        {"input": {"messages": TURNS}, "preferred_output": ANSWER, "non_preferred_output": ANSWER},
        "preference",
        True,
    ),
    "kto.jsonl": ({"prompt": "Q", "completion": "A", "label": True}, "unpaired", False),
    "chat-kto.jsonl": ({"prompt": TURNS, "completion": ANSWER, "label": False}, "unpaired", True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_shape_and_chat_from_the_first_record(tmp_path: Path, name: str) -> None:
    record, shape, chat = CASES[name]
    path = tmp_path / name
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")

    assert (first_row_shape(path), trains_with_chat(path)) == (shape, chat)


def test_a_csv_pair_with_json_turns_in_its_cells_trains_with_chat(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    cell = json.dumps(TURNS).replace('"', '""')
    path.write_text(f'prompt,chosen,rejected\n"{cell}","{cell}","{cell}"\n', encoding="utf-8")
    plain = tmp_path / "plain.csv"
    plain.write_text("prompt,chosen,rejected\nQ,A,B\n", encoding="utf-8")

    assert (first_row_shape(path), trains_with_chat(path)) == ("preference", True)
    assert (first_row_shape(plain), trains_with_chat(plain)) == ("preference", False)
