"""Preference pairs for the bundled sample task, built from its SFT rows.

Each SFT row gives one pair with the same prompt: `chosen` is the row's own (right) completion and
`rejected` a plausible wrong answer, so DPO, IPO, ORPO and KTO (which can read the pairs unpaired) learn to
prefer the full, correct parse. Row i's rejected answer is corruption i mod 3:

0. only three keys kept (`city`, `district`, `road`): a truncated object that drops the rest;
1. `number` and `floor` set to null: the right keys, but the house number lost (`number` is never null in
   the sample, so this always differs from chosen);
2. another row's district: the next row (wrapping) whose district differs, so the JSON is well-formed and
   complete but names the wrong district.

No randomness: the same SFT rows always give the same pairs. Stdlib only, like tools.sample_data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from tools.sample_data import FIELDS, parse_fields

CORRUPTIONS: tuple[str, ...] = ("three_keys", "number_floor_null", "other_district")
_KEPT_KEYS = FIELDS[:3]


def _dump(fields: dict[str, str | None]) -> str:
    # The same compact form as the SFT completions, so chosen and rejected differ only in content.
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def _other_district(rows_fields: Sequence[dict[str, str | None]], i: int) -> str:
    own = rows_fields[i]["district"]
    for step in range(1, len(rows_fields)):
        other = rows_fields[(i + step) % len(rows_fields)]["district"]
        if other is not None and other != own:
            return other
    raise ValueError("every row has the same district; cannot build an other-district rejected answer")


def rejected_completion(rows_fields: Sequence[dict[str, str | None]], i: int) -> str:
    """Row i's rejected answer (corruption i mod 3, see the module docstring)."""
    fields = dict(rows_fields[i])
    kind = CORRUPTIONS[i % len(CORRUPTIONS)]
    if kind == "three_keys":
        return _dump({name: fields[name] for name in _KEPT_KEYS})
    if kind == "number_floor_null":
        return _dump({**fields, "number": None, "floor": None})
    return _dump({**fields, "district": _other_district(rows_fields, i)})


def preference_pairs(rows: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """One {"prompt", "chosen", "rejected"} pair per SFT row, in row order."""
    rows_fields = [parse_fields(row["completion"]) for row in rows]
    pairs = []
    for i, row in enumerate(rows):
        rejected = rejected_completion(rows_fields, i)
        if rejected == row["completion"]:  # cannot happen with the corruptions above; a pair must teach something
            raise ValueError(f"row {i}: the rejected answer equals the chosen one")
        pairs.append({"prompt": row["prompt"], "chosen": row["completion"], "rejected": rejected})
    return pairs
