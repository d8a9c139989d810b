"""Local paths a request may name: base models and datasets only under the allowed roots.

The pre-flight check (app.preflight) enforces them for the web and the workers (not for `loradeck train` on
a user's own files), before it looks at a path at all, so a refusal never tells whether a path outside the
roots exists.
"""

from __future__ import annotations

from pathlib import Path

from app.config import Settings


def inside(path: Path, roots: list[Path]) -> bool:
    resolved = path.expanduser().resolve()
    return any(resolved.is_relative_to(root) for root in roots)


def _where(roots: list[Path]) -> str:
    return ", ".join(str(root) for root in roots)


def model_outside(value: str, settings: Settings) -> str:
    return (
        f"base_model: {value} is outside the model directories loradeck may read "
        f"({_where(settings.allowed_model_roots)}); add its folder to LORADECK_MODEL_ROOTS"
    )


def dataset_outside(field: str, value: str, settings: Settings) -> str:
    return (
        f"{field}: {value} is outside the dataset directories loradeck may read "
        f"({_where(settings.allowed_dataset_roots)}); upload it on the Datasets page, "
        "or add its folder to LORADECK_DATASET_ROOTS"
    )
