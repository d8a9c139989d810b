"""Local paths a request may name: base models and datasets only under the allowed roots.

RunSpec itself accepts any local path (the `loradeck train` command reads the user's own files); the web
adds this check, so nobody can point a run at a file elsewhere on the server.
"""

from __future__ import annotations

from pathlib import Path

from app.config import Settings
from app.schemas import RunSpec


def _inside(path: Path, roots: list[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(root) for root in roots)


def _where(roots: list[Path]) -> str:
    return ", ".join(str(root) for root in roots)


def model_path_problem(value: str, settings: Settings) -> str | None:
    if not Path(value).is_absolute():  # a hub id
        return None
    if _inside(Path(value), settings.allowed_model_roots):
        return None
    return (
        f"base_model: {value} is outside the model directories loradeck may read "
        f"({_where(settings.allowed_model_roots)}); add its folder to LORADECK_MODEL_ROOTS"
    )


def dataset_path_problem(field: str, value: str, settings: Settings) -> str | None:
    if not value or _inside(Path(value), settings.allowed_dataset_roots):
        return None
    return (
        f"{field}: {value} is outside the dataset directories loradeck may read "
        f"({_where(settings.allowed_dataset_roots)}); upload it on the Datasets page, "
        "or add its folder to LORADECK_DATASET_ROOTS"
    )


def spec_path_problems(spec: RunSpec, settings: Settings) -> dict[str, str]:
    """Field name -> why its path is refused, for every path-like field of the spec."""
    problems = {"base_model": model_path_problem(spec.base_model, settings)}
    problems |= {
        name: dataset_path_problem(name, getattr(spec, name), settings) for name in ("dataset", "eval_dataset")
    }
    return {name: message for name, message in problems.items() if message}
