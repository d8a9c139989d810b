"""What the tests of OpenAI's API under /v1 share: the official SDK's client pointed at a loradeck, and the bundled
sample written as an OpenAI fine-tuning file."""

from __future__ import annotations

import json
from typing import Any

from openai import OpenAI

SYSTEM = "Parse the address into JSON."


def client(url: str, key: str = "sk-anything") -> OpenAI:
    """The SDK as a script makes it, `base_url` changed; no retries, so a test sees each answer."""
    return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def chat_rows(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The sample's prompt/completion rows as conversations, as an OpenAI chat fine-tuning file holds them."""
    return [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["completion"], "weight": 1},
            ]
        }
        for row in rows
    ]
