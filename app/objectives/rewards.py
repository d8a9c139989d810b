"""The rewards a GRPO run is scored by: built-in functions a user chooses and weighs, never code of their own.

Each reward reads the completion the policy wrote and, where it compares, the row's reference answer (the
dataset's `completion`, or a messages row's last assistant turn), and gives a score in [0, 1]. The definitions
below are the contract: worker.engine.rewards computes them, the form and the README show them.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RewardFunction = Literal[
    "json_valid", "json_keys", "json_fields", "exact", "regex", "contains", "not_contains", "length"
]  # fmt: skip

# Each function's exact definition, as the form and the README state it.
DEFINITIONS: dict[str, str] = {
    "json_valid": "1 when the completion (surrounding whitespace stripped) parses as one JSON value, else 0.",
    "json_keys": "For a JSON-object reference: the keys the completion's JSON object shares with the reference's, "
    "over the keys in either (1: the reference's keys present and no others; 0: not a JSON object).",
    "json_fields": "For a JSON-object reference: the share of the reference's fields whose value the completion's "
    "JSON object holds equal (a null field counts when the completion has it null), each field weighted by "
    "field_weights (default 1; a field weighted 0 is not scored; 1 when no field is scored); 0 when the completion "
    "is not a JSON object.",
    "exact": "1 when the completion equals the reference: as JSON values when both parse (key order and "
    "spacing ignored), else as text with surrounding whitespace stripped; else 0.",
    "regex": "1 when `pattern` matches somewhere in the completion (anchor it with ^ and $ to match all of it), "
    "else 0; a match that runs past its time bound (0.1 s) scores 0 and the run log warns once.",
    "contains": "The share of `texts` that appear in the completion (case-sensitive; empty texts ignored).",
    "not_contains": "1 minus the share of `texts` that appear in the completion: 1 when none does.",
    "length": "1 when the completion's length in tokens is within [min_tokens, max_tokens]; below, "
    "length / min_tokens; above, max_tokens / length.",
}
NEEDS_REFERENCE = ("json_keys", "json_fields", "exact")  # compared with the row's reference answer
# The parameters each function takes; any other one given to it is refused.
PARAMETERS: dict[str, tuple[str, ...]] = {
    "json_fields": ("field_weights",),
    "regex": ("pattern",),
    "contains": ("texts",),
    "not_contains": ("texts",),
    "length": ("min_tokens", "max_tokens"),
}
_PARAMETER_NAMES = ("field_weights", "pattern", "texts", "min_tokens", "max_tokens")
MAX_PATTERN = 500


class Reward(BaseModel):
    """One reward function and its weight in the sum GRPO's advantages are computed from."""

    model_config = ConfigDict(extra="forbid")

    function: RewardFunction = Field(description="Which built-in reward (definitions in app.objectives.rewards).")
    weight: float = Field(default=1.0, gt=0.0, le=100.0, description="Its weight in the summed reward.")
    field_weights: dict[str, float] = Field(
        default_factory=dict, max_length=100, description="json_fields: a weight per field name; default 1."
    )
    pattern: str = Field(default="", max_length=MAX_PATTERN, description="regex: the pattern searched for.")
    texts: list[str] = Field(
        default_factory=list, max_length=50, description="contains, not_contains: the texts looked for."
    )
    min_tokens: int = Field(default=0, ge=0, le=100_000, description="length: the shortest length scoring 1.")
    max_tokens: int = Field(default=0, ge=0, le=100_000, description="length: the longest length scoring 1.")

    @model_validator(mode="after")
    def _parameters(self) -> Reward:
        takes = PARAMETERS.get(self.function, ())
        for name in _PARAMETER_NAMES:
            if name in self.model_fields_set and name not in takes and getattr(self, name):
                raise ValueError(f"rewards: {self.function} takes no {name}" + _takes(self.function))
        if self.function == "regex":
            if not self.pattern:
                raise ValueError("rewards: regex needs a pattern, e.g. ^\\{.*\\}$")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"rewards: regex pattern {self.pattern!r} does not compile: {exc}") from exc
        if self.function in ("contains", "not_contains") and not any(self.texts):
            raise ValueError(f"rewards: {self.function} needs texts, the strings to look for")
        if any(weight < 0 for weight in self.field_weights.values()):
            raise ValueError("rewards: json_fields field_weights are 0 or more (0: the field is not scored)")
        if self.field_weights and not any(self.field_weights.values()):
            raise ValueError("rewards: json_fields field_weights give every field 0; weigh at least one")
        if self.function == "length" and not 0 < self.max_tokens >= self.min_tokens:
            raise ValueError("rewards: length needs max_tokens above 0 and at least min_tokens")
        return self

    @property
    def label(self) -> str:
        """How the run page names it (its metric key in TRL's logs is the function's name)."""
        return self.function.replace("_", " ")


def _takes(function: str) -> str:
    takes = PARAMETERS.get(function, ())
    return f" (it takes {', '.join(takes)})" if takes else " (it takes only a weight)"


DEFAULT_REWARDS = (Reward(function="json_fields"), Reward(function="exact"))
