"""Local paths a request may name: base models and datasets only under the allowed roots.

RunSpec itself accepts any local path where nothing enforces the roots (the `loradeck train` command reads
the user's own files); the web (for each request) and the workers (for each task) enforce them, and then
RunSpec checks the roots before it looks at the path at all, so a refusal never tells whether a path
outside the roots exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

from app.config import Settings

if TYPE_CHECKING:
    from app.schemas import RunSpec

_ENFORCED: ContextVar[bool] = ContextVar("loradeck_roots_enforced", default=False)


def roots_enforced() -> bool:
    return _ENFORCED.get()


@contextmanager
def enforcing_roots() -> Iterator[None]:
    """Within this block (and the threads it starts) RunSpec refuses local paths outside the allowed roots."""
    token = _ENFORCED.set(True)
    try:
        yield
    finally:
        _ENFORCED.reset(token)


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


def model_path_problem(value: str, settings: Settings) -> str | None:
    if not Path(value).is_absolute():  # a hub id
        return None
    return None if inside(Path(value), settings.allowed_model_roots) else model_outside(value, settings)


def dataset_path_problem(field: str, value: str, settings: Settings) -> str | None:
    if not value or inside(Path(value), settings.allowed_dataset_roots):
        return None
    return dataset_outside(field, value, settings)


def spec_path_problems(spec: RunSpec, settings: Settings) -> dict[str, str]:
    """Field name -> why its path is refused, for every path-like field of the spec."""
    problems = {"base_model": model_path_problem(spec.base_model, settings)}
    problems |= {
        name: dataset_path_problem(name, getattr(spec, name), settings) for name in ("dataset", "eval_dataset")
    }
    return {name: message for name, message in problems.items() if message}
