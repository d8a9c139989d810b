"""The body of `POST /v1/fine_tuning/jobs`, checked field by field as OpenAI checks it, so that a refusal names
its `param` (`hyperparameters.n_epochs`, `method.dpo.hyperparameters.beta`, `suffix`, ...) and says what to send.

Shapes are those of the `openai` SDK's `job_create_params`: hyperparameters at the top level (the legacy
place) or under `method.<type>.hyperparameters`, each a number or "auto".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from app.openai_ids import SUFFIX_RE

METHODS = ("supervised", "dpo")
# Bounds: OpenAI's own (n_epochs 1-50, batch size up to 256, beta 0-2) where RunSpec allows them.
BOUNDS: dict[str, tuple[type, float, float]] = {
    "n_epochs": (int, 1, 50),
    "batch_size": (int, 1, 256),
    "learning_rate_multiplier": (float, 1e-6, 100.0),
    "beta": (float, 1e-6, 2.0),
}
SUPERVISED_KEYS = ("n_epochs", "batch_size", "learning_rate_multiplier")
DPO_KEYS = (*SUPERVISED_KEYS, "beta")
KNOWN = ("model", "training_file", "validation_file", "suffix", "seed", "metadata", "hyperparameters", "method",
         "integrations")  # fmt: skip
MAX_METADATA, MAX_KEY, MAX_VALUE = 16, 64, 512
MAX_SEED = 2**32 - 1


class RequestProblem(ValueError):
    """A body OpenAI would refuse with 400; `param` names the field."""

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(f"{param}: {message}" if param else message)
        self.param = param


@dataclass(frozen=True)
class JobRequest:
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None
    method: str = "supervised"
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # numbers or "auto", by OpenAI's names


def parse_job_request(body: Any) -> JobRequest:
    """The job a body asks for, or RequestProblem naming the first field that cannot be used."""
    if not isinstance(body, dict):
        raise RequestProblem(None, "the body must be a JSON object with model and training_file")
    if unknown := sorted(set(body) - set(KNOWN)):
        raise RequestProblem(unknown[0], f"unknown parameter; a job takes {', '.join(KNOWN)}")
    model = _text(body, "model", required=True)
    training_file = _text(body, "training_file", required=True)
    validation_file = _text(body, "validation_file")
    suffix = _text(body, "suffix")
    if suffix is not None and not SUFFIX_RE.match(suffix):
        raise RequestProblem("suffix", "use 1 to 40 letters, digits, '.', '_' or '-' (it becomes part of the model id)")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED):
        raise RequestProblem("seed", f"must be an integer from 0 to {MAX_SEED}")
    if body.get("integrations"):
        raise RequestProblem("integrations", "integrations (wandb) are not supported; leave them out")
    method, hyperparameters = _method(body)
    return JobRequest(
        model=model or "",
        training_file=training_file or "",
        validation_file=validation_file,
        suffix=suffix,
        seed=seed,
        metadata=_metadata(body.get("metadata")),
        method=method,
        hyperparameters=hyperparameters,
    )


def _text(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise RequestProblem(name, "is required")
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise RequestProblem(name, "must be a non-empty string of up to 200 characters")
    return value.strip()


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_METADATA:
        raise RequestProblem("metadata", f"must be an object of up to {MAX_METADATA} key-value pairs")
    for key, item in value.items():
        if len(key) > MAX_KEY or not isinstance(item, str) or len(item) > MAX_VALUE:
            raise RequestProblem(
                "metadata", f"keys are strings of up to {MAX_KEY} characters, values strings of up to {MAX_VALUE}"
            )
    return dict(value)


def _method(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The method's type and its hyperparameters, from `method` or the legacy top-level `hyperparameters`."""
    legacy = body.get("hyperparameters")
    method = body.get("method")
    if method is None:
        return "supervised", _hyperparameters(legacy, "hyperparameters", SUPERVISED_KEYS)
    if not isinstance(method, dict):
        raise RequestProblem("method", 'must be an object such as {"type": "supervised"}')
    kind = method.get("type")
    if kind == "reinforcement":
        raise RequestProblem("method.type", "reinforcement fine-tuning is not supported; use supervised or dpo")
    if kind not in METHODS:
        raise RequestProblem("method.type", f"must be one of {', '.join(METHODS)}")
    if other := sorted(set(method) - {"type", kind}):
        raise RequestProblem(f"method.{other[0]}", f"does not go with method.type {kind}")
    section = method.get(kind) or {}
    if not isinstance(section, dict) or set(section) - {"hyperparameters"}:
        raise RequestProblem(f"method.{kind}", 'must be an object {"hyperparameters": {...}}')
    nested = section.get("hyperparameters")
    if legacy is not None and nested is not None:
        raise RequestProblem(
            "hyperparameters", f"give them in method.{kind}.hyperparameters only, not at the top level too"
        )
    if legacy is not None and kind != "supervised":
        raise RequestProblem("hyperparameters", f"for method {kind} give them in method.{kind}.hyperparameters")
    keys = DPO_KEYS if kind == "dpo" else SUPERVISED_KEYS
    if legacy is not None:
        return kind, _hyperparameters(legacy, "hyperparameters", keys)
    return kind, _hyperparameters(nested, f"method.{kind}.hyperparameters", keys)


def _hyperparameters(values: Any, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise RequestProblem(where, "must be an object of " + ", ".join(keys))
    if unknown := sorted(set(values) - set(keys)):
        raise RequestProblem(f"{where}.{unknown[0]}", f"unknown hyperparameter; use {', '.join(keys)}")
    checked: dict[str, Any] = {}
    for name, value in values.items():
        kind, low, high = BOUNDS[name]
        param = f"{where}.{name}"
        if value == "auto" or value is None:
            checked[name] = "auto"
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not number or (kind is int and float(value) != int(value)):
            raise RequestProblem(param, f'must be {"an integer" if kind is int else "a number"} or "auto"')
        if not low <= value <= high:
            raise RequestProblem(param, f'must be between {low:g} and {high:g}, or "auto"')
        checked[name] = int(value) if kind is int else float(value)
    return checked
