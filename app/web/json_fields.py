"""The form's JSON fields (rewards: a list of objects, edited as a table by static/js/rewards_editor.js, sent as
JSON text in one field): reading the text, and saying what is wrong with it where it is wrong."""

from __future__ import annotations

import json
from typing import Any

from app.objectives.grpo import MAX_REWARDS
from app.objectives.rewards import DEFINITIONS, MAX_PATTERN, NEEDS_REFERENCE, PARAMETERS

MAX_JSON_FIELD = 20_000  # characters: eight rewards with their patterns and texts fit many times over


def json_problem(name: str, text: str) -> str | None:
    """Why a JSON field's text is not a list of objects (None: it is one), naming where and what to write."""
    example = '[{"function": "exact", "weight": 1}]'
    if len(text) > MAX_JSON_FIELD:
        return f"{name}: {len(text):,} characters of JSON; at most {MAX_JSON_FIELD:,}"
    try:
        value = json.loads(text)
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        where = f" at line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        return f"{name}: not valid JSON{where} ({reason}); give a list of objects such as {example}"
    except RecursionError:  # `[[[[...]]]]` thousands deep: a reward nests two levels at most
        return f"{name}: JSON nested too deeply; give a list of objects such as {example}"
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        return f"{name}: give a JSON list of objects, one per reward, such as {example}"
    return None


def reward_rule() -> dict[str, Any]:
    """What the rewards editor (static/js/rewards_editor.js) offers: each function with its exact definition and
    the parameters it takes (app.objectives.rewards)."""
    return {
        "functions": list(DEFINITIONS),
        "definitions": DEFINITIONS,
        "parameters": {name: list(PARAMETERS.get(name, ())) for name in DEFINITIONS},
        "needs_reference": list(NEEDS_REFERENCE),
        "max_rewards": MAX_REWARDS,
        "max_pattern": MAX_PATTERN,
    }


def item_message(name: str, where: tuple[int | str, ...], message: str) -> str:
    """An error inside a JSON field's list, naming the item (rewards: reward 2) and its key; a model's own rule
    already names the field ("rewards: regex needs a pattern")."""
    if not where or not isinstance(where[0], int):
        return message if message.startswith(f"{name}:") else f"{name}: {message}"
    item = f"{name}: reward {where[0] + 1}"
    rest = message.removeprefix(f"{name}: ")
    keys = [str(part) for part in where[1:]]
    return f"{item}, {'.'.join(keys)}: {rest}" if keys else f"{item}: {rest}"
