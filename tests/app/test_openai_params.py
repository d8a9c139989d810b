"""The parameters of OpenAI's completion bodies as loradeck reads them: honoured, ignored, or refused naming the
parameter and what to send instead (the SDK end to end is tests/app/test_openai_inference.py)."""

# ruff: noqa: E501  (tables of cases read best one case a line)
from __future__ import annotations

from typing import Any

import pytest

from app.errors import InvalidInput
from app.services.openai_params import parse_body

ASK = [{"role": "user", "content": "hi"}]


def test_openai_spellings_are_read_as_loradeck_takes_them() -> None:
    parsed = parse_body(
        {"model": "m", "stream": True, "stream_options": {"include_usage": True}, "max_completion_tokens": 7, "stop": "}",
         "seed": -1, "temperature": 0, "user": "u-1", "metadata": {"a": "b"},
         "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
        chat=True,
    )  # fmt: skip
    job = parsed.job
    assert parsed.stream and parsed.include_usage
    assert job.max_tokens == 7 and job.stop == ["}"] and job.temperature == 0
    assert 0 <= job.seed < 2**63
    assert [turn.model_dump() for turn in job.messages or []] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "ab"},
    ]
    assert parse_body({"model": "m", "prompt": ["one prompt"]}, chat=False).job.prompt == "one prompt"


def test_without_a_seed_each_request_samples_its_own() -> None:
    seeds = {parse_body({"model": "m", "messages": ASK}, chat=True).job.seed for _ in range(5)}
    assert len(seeds) > 1


REFUSED: list[tuple[str, dict[str, Any], bool, str, str]] = [
    ("tool calling", {"tools": [{"type": "function"}]}, True, "tools", "not supported"),
    ("a tool result", {"messages": [*ASK, {"role": "tool", "content": "x"}]}, True, "messages[1].role", "tool results"),
    ("an image part", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, True, "messages[0].content", "image_url parts"),
    ("log probabilities", {"logprobs": 2}, False, "logprobs", "not supported"),
    ("JSON mode", {"response_format": {"type": "json_schema"}}, True, "response_format", "'json_schema'"),
    ("a penalty", {"frequency_penalty": 1}, True, "frequency_penalty", "only 0"),
    ("echo", {"echo": True}, False, "echo", "not supported"),
    ("an unknown parameter", {"temprature": 1}, True, "temprature", "not a parameter loradeck knows"),
    ("too many stops", {"stop": list("abcde")}, True, "stop", "at most 4"),
    ("an empty stop", {"stop": [""]}, True, "stop", "non-empty"),
    ("too many choices", {"n": 9}, True, "n", "less than or equal to 8"),
    ("too long an answer", {"max_completion_tokens": 5000}, True, "max_completion_tokens", "4096"),
    ("a temperature past 2", {"temperature": 2.5}, True, "temperature", "2"),
    ("token ids as the prompt", {"prompt": [1, 2, 3]}, False, "prompt", "no token ids"),
    ("no messages", {"messages": []}, True, "messages", "non-empty list"),
    ("no model", {"model": ""}, True, "model", "GET /v1/models"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "extra", "chat", "param", "words"), REFUSED, ids=[case[0] for case in REFUSED])
def test_what_cannot_be_honoured_is_refused_naming_the_parameter(
    what: str, extra: dict[str, Any], chat: bool, param: str, words: str
) -> None:
    body = {"model": "m", **({"messages": ASK} if chat else {"prompt": "p"}), **extra}
    with pytest.raises(InvalidInput) as refused:
        parse_body(body, chat=chat)
    assert refused.value.errors[0]["loc"] == [param], refused.value
    assert words in str(refused.value)
