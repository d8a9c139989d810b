"""Preference rows: pairs (prompt/chosen/rejected, plain or conversational, or OpenAI's preference JSONL) and
unpaired rows (prompt/completion/label, for KTO), each parsed into a Row or the reason it is not one.

TRL's shapes, as its trainers take them: a prompt as text, or as the turns before the answer; each answer as
text, or as a list holding one assistant turn. OpenAI's preference format (`input.messages`,
`preferred_output`, `non_preferred_output`) is converted on read. Stdlib only, as worker.data.files is.
"""

from __future__ import annotations

import json
from typing import Any

ROLES = ("system", "user", "assistant")
PAIR_KEYS = ("chosen", "rejected", "preferred_output", "non_preferred_output")
OPENAI_KEYS = ("input", "preferred_output", "non_preferred_output")
WHAT_A_PAIR_NEEDS = (
    '"prompt", "chosen" and "rejected" (or OpenAI\'s "input", "preferred_output" and "non_preferred_output")'
)
LABELS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def is_pair(record: dict[str, Any]) -> bool:
    return any(key in record for key in PAIR_KEYS)


def is_unpaired(record: dict[str, Any]) -> bool:
    return "label" in record and ("prompt" in record or "completion" in record)


def json_type(value: Any) -> str:
    names = {type(None): "null", bool: "true/false", int: "a number", float: "a number", str: "a string"}
    return names.get(type(value), "a list" if isinstance(value, list) else "an object")


def _decoded(key: str, value: Any) -> Any:
    """CSV cells and Parquet string columns hold a list of turns as JSON text; raises ValueError for JSON text
    that is broken (read as plain text, it would train on the brackets without a word said)."""
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f'"{key}" looks like a JSON list of turns but is not valid JSON: {exc.msg} at column {exc.colno}'
            ) from None
    return value


def _turns(key: str, value: list[Any]) -> list[dict[str, str]]:
    """A non-empty list of {"role", "content"} turns; raises ValueError naming the turn that is not one."""
    if not value:
        raise ValueError(f'"{key}" is an empty list; give at least one {{"role", "content"}} turn')
    turns = []
    for number, turn in enumerate(value, start=1):
        where = f'"{key}" turn {number}'
        if not isinstance(turn, dict):
            raise ValueError(f'{where}: expected a {{"role", "content"}} object, got {json_type(turn)}')
        for part in ("role", "content"):
            if part not in turn:
                raise ValueError(f'{where}: "{part}" is missing')
            if not isinstance(turn[part], str):
                raise ValueError(f'{where}: "{part}" must be a string, got {json_type(turn[part])}')
        if turn["role"] not in ROLES:
            raise ValueError(f'{where}: unknown role "{turn["role"]}"; use {", ".join(ROLES[:-1])} or {ROLES[-1]}')
        turns.append({"role": turn["role"], "content": turn["content"]})
    return turns


def _prompt(key: str, value: Any, answers: str) -> tuple[str, list[dict[str, str]]]:
    """The prompt as (text, []) or ("", turns), the turns before the answer; raises ValueError."""
    value = _decoded(key, value)
    if isinstance(value, str):
        return value, []
    if not isinstance(value, list):
        raise ValueError(f'"{key}" must be a string or a list of {{"role", "content"}} turns, got {json_type(value)}')
    turns = _turns(key, value)
    if turns[-1]["role"] == "assistant":
        raise ValueError(f'"{key}" ends with an assistant turn; it holds the turns before the answer, and {answers}')
    return "", turns


def _answer(key: str, value: Any, conversational: bool) -> str:
    """The answer's text; raises ValueError naming what is wrong."""
    value = _decoded(key, value)
    if isinstance(value, str) and not conversational:
        text = value
    elif isinstance(value, list):
        turns = _turns(key, value)
        if len(turns) == 1 and turns[0]["role"] != "assistant":
            raise ValueError(f'"{key}" turn 1 is a {turns[0]["role"]} turn; the answer is one assistant turn')
        if len(turns) != 1:
            raise ValueError(f'"{key}" must hold one assistant turn (the answer), got {len(turns)} turns')
        text = turns[0]["content"]
    elif isinstance(value, str):
        raise ValueError(
            f'"{key}" is text but the prompt is a conversation; give it as [{{"role": "assistant", "content": "..."}}]'
        )
    else:
        raise ValueError(f'"{key}" must be a string or a list with one assistant turn, got {json_type(value)}')
    if not text.strip():
        raise ValueError(f'"{key}" is empty')
    return text


def parse_pair(value: dict[str, Any]) -> dict[str, Any] | str:
    """A pair as Row fields (prompt or messages, chosen, rejected), or the reason it is not one."""
    try:
        return _pair(value)
    except ValueError as exc:
        return str(exc)


def _pair(value: dict[str, Any]) -> dict[str, Any]:
    if "preferred_output" in value or "non_preferred_output" in value:
        if missing := [key for key in OPENAI_KEYS if key not in value]:
            raise ValueError(
                f'"{missing[0]}" is missing; OpenAI\'s preference rows need "input", "preferred_output" '
                'and "non_preferred_output"'
            )
        source = value["input"]
        if not isinstance(source, dict) or "messages" not in source:
            raise ValueError(
                f'"input" must be an object holding "messages" (the turns before the answer), got {json_type(source)}'
            )
        chosen_key, rejected_key = "preferred_output", "non_preferred_output"
        text, turns = _prompt("input.messages", source["messages"], f'the answers go in "{chosen_key}"')
    else:
        for key in ("prompt", "chosen", "rejected"):
            if key not in value:
                raise ValueError(f'"{key}" is missing; a preference row needs {WHAT_A_PAIR_NEEDS}')
        chosen_key, rejected_key = "chosen", "rejected"
        text, turns = _prompt("prompt", value["prompt"], 'the answers go in "chosen" and "rejected"')
    chosen = _answer(chosen_key, value[chosen_key], bool(turns))
    rejected = _answer(rejected_key, value[rejected_key], bool(turns))
    if chosen.strip() == rejected.strip():  # answers apart only in surrounding blanks teach nothing either
        raise ValueError(
            f'"{chosen_key}" and "{rejected_key}" are the same answer; a pair teaches nothing unless they differ'
        )
    return {"prompt": text, "messages": turns, "chosen": chosen, "rejected": rejected}


def parse_unpaired(value: dict[str, Any]) -> dict[str, Any] | str:
    """An unpaired row as Row fields (prompt or messages, completion, label), or the reason it is not one."""
    try:
        return _unpaired(value)
    except ValueError as exc:
        return str(exc)


def _unpaired(value: dict[str, Any]) -> dict[str, Any]:
    for key in ("prompt", "completion", "label"):
        if key not in value:
            raise ValueError(
                f'"{key}" is missing; an unpaired row needs "prompt", "completion" and "label" (true: a good answer)'
            )
    text, turns = _prompt("prompt", value["prompt"], 'the answer goes in "completion"')
    completion = _answer("completion", value["completion"], bool(turns))
    return {"prompt": text, "messages": turns, "completion": completion, "label": _label(value["label"])}


def _label(label: Any) -> bool:
    """true/false; CSV cells spell it as text, Parquet and JSON writers often as 1/0."""
    if isinstance(label, str) and label.strip().lower() in LABELS:
        return LABELS[label.strip().lower()]
    if isinstance(label, int) and not isinstance(label, bool) and label in (0, 1):
        return bool(label)
    if isinstance(label, bool):
        return label
    given = json.dumps(label, ensure_ascii=False) if isinstance(label, str | int | float) else json_type(label)
    raise ValueError(
        f'"label" must be true (a good answer) or false (a bad one), got {given[:40]}; '
        "a row with a label is read as an unpaired (KTO) row"
    )
