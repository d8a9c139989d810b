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
WHAT_A_PAIR_NEEDS = (
    '"prompt", "chosen" and "rejected" (or OpenAI\'s "input", "preferred_output", "non_preferred_output")'
)
LABELS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def is_pair(record: dict[str, Any]) -> bool:
    return any(key in record for key in PAIR_KEYS)


def is_unpaired(record: dict[str, Any]) -> bool:
    return "label" in record and ("prompt" in record or "completion" in record)


def _json_type(value: Any) -> str:
    names = {type(None): "null", bool: "true/false", int: "a number", float: "a number", str: "a string"}
    return names.get(type(value), "a list" if isinstance(value, list) else "an object")


def _decoded(value: Any) -> Any:
    # CSV cells and Parquet string columns hold a list of turns as JSON text.
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _turns(key: str, value: Any) -> list[dict[str, str]] | str:
    """A list of {"role", "content"} turns, or the reason it is not one."""
    if not isinstance(value, list) or not value:
        return f'"{key}" must be a non-empty list of {{"role", "content"}} turns, got {_json_type(value)}'
    turns = []
    for number, turn in enumerate(value, start=1):
        where = f'"{key}" turn {number}'
        if not isinstance(turn, dict):
            return f'{where}: expected a {{"role", "content"}} object, got {_json_type(turn)}'
        for part in ("role", "content"):
            if not isinstance(turn.get(part), str):
                return f'{where}: "{part}" is missing' if part not in turn else f'{where}: "{part}" must be a string'
        if turn["role"] not in ROLES:
            return f'{where}: unknown role "{turn["role"]}"; use {", ".join(ROLES[:-1])} or {ROLES[-1]}'
        turns.append({"role": turn["role"], "content": turn["content"]})
    return turns


def _prompt(key: str, value: Any) -> tuple[str, list[dict[str, str]]] | str:
    """The prompt as (text, []) or ("", turns); turns end with a user (or system) turn, before the answer."""
    value = _decoded(value)
    if isinstance(value, str):
        return value, []
    turns = _turns(key, value)
    if isinstance(turns, str):
        return turns
    if turns[-1]["role"] == "assistant":
        return f'"{key}" ends with an assistant turn; it holds the turns before the answer'
    return "", turns


def _answer(key: str, value: Any, conversational: bool) -> str:
    """The answer's text; raises ValueError naming what is wrong."""
    value = _decoded(value)
    if isinstance(value, str) and not conversational:
        text = value
    elif isinstance(value, list):
        turns = _turns(key, value)
        if isinstance(turns, str):
            raise ValueError(turns)
        if len(turns) != 1 or turns[0]["role"] != "assistant":
            raise ValueError(f'"{key}" must hold one assistant turn (the answer), got {len(turns)} turns')
        text = turns[0]["content"]
    elif isinstance(value, str):
        raise ValueError(f'"{key}" is text but the prompt is a conversation; give it as [{{"role": "assistant", ...}}]')
    else:
        raise ValueError(f'"{key}" must be a string or a list with one assistant turn, got {_json_type(value)}')
    if not text.strip():
        raise ValueError(f'"{key}" is empty')
    return text


def parse_pair(value: dict[str, Any]) -> dict[str, Any] | str:
    """A pair as Row fields (prompt or messages, chosen, rejected), or the reason it is not one."""
    if "preferred_output" in value or "non_preferred_output" in value:
        keys, given = ("input", "preferred_output", "non_preferred_output"), value
        missing = [key for key in keys if key not in given]
        if missing:
            return f'"{missing[0]}" is missing; OpenAI\'s preference rows need {", ".join(keys)}'
        source = given["input"]
        if not isinstance(source, dict) or "messages" not in source:
            return '"input" must be an object holding "messages", the turns before the answer'
        prompt = _prompt("input.messages", source["messages"])
        chosen_key, rejected_key = "preferred_output", "non_preferred_output"
    else:
        for key in ("prompt", "chosen", "rejected"):
            if key not in value:
                return f'"{key}" is missing; a preference row needs {WHAT_A_PAIR_NEEDS}'
        prompt = _prompt("prompt", value["prompt"])
        chosen_key, rejected_key = "chosen", "rejected"
    if isinstance(prompt, str):
        return prompt
    text, turns = prompt
    try:
        chosen = _answer(chosen_key, value[chosen_key], bool(turns))
        rejected = _answer(rejected_key, value[rejected_key], bool(turns))
    except ValueError as exc:
        return str(exc)
    if chosen == rejected:
        return f'"{chosen_key}" and "{rejected_key}" are the same answer; a pair teaches nothing unless they differ'
    return {"prompt": text, "messages": turns, "chosen": chosen, "rejected": rejected}


def parse_unpaired(value: dict[str, Any]) -> dict[str, Any] | str:
    """An unpaired row as Row fields (prompt or messages, completion, label), or the reason it is not one."""
    for key in ("prompt", "completion", "label"):
        if key not in value:
            return f'"{key}" is missing; an unpaired row needs "prompt", "completion" and "label" (true: a good answer)'
    prompt = _prompt("prompt", value["prompt"])
    if isinstance(prompt, str):
        return prompt
    text, turns = prompt
    try:
        completion = _answer("completion", value["completion"], bool(turns))
    except ValueError as exc:
        return str(exc)
    label = value["label"]
    if isinstance(label, str) and label.strip().lower() in LABELS:  # CSV cells
        label = LABELS[label.strip().lower()]
    if not isinstance(label, bool):
        return f'"label" must be true (a good answer) or false (a bad one), got {_json_type(label)}'
    return {"prompt": text, "messages": turns, "completion": completion, "label": label}
