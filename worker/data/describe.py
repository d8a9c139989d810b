"""The inspect task that validates and describes a dataset file for the web (row problems or statistics).

The file is a user's upload, so the work runs in a child process under the inspection memory and time limits
(worker.runtime.bounded); the paths are checked against the allowed roots before anything is read.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from celery import shared_task

from app.config import get_settings
from app.paths import dataset_outside, enforcing_roots, inside
from app.queue import DESCRIBE_DATASET_TASK, Queue

MAX_PROBLEMS = 200


@lru_cache(maxsize=4)
def _tokenizer(base_model: str) -> Any:
    # The inspector describes many files with few tokenizers: load each once.
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model, trust_remote_code=get_settings().allow_trust_remote_code)


def describe(payload: dict[str, Any]) -> dict[str, Any]:
    """{"ok": False, "problems": [...], "count": n} for a file with bad rows, else {"ok": True, "description"}."""
    from worker.data.encode import describe_dataset
    from worker.data.files import validate_dataset

    problems = validate_dataset(payload["path"])
    if problems:
        shown = [{"line": p.line, "message": p.message} for p in problems[:MAX_PROBLEMS]]
        return {"ok": False, "problems": shown, "count": len(problems)}
    description = describe_dataset(
        payload["path"],
        _tokenizer(payload["base_model"]),
        max_seq_length=int(payload["max_seq_length"]),
        train_on_prompt=bool(payload.get("train_on_prompt", False)),
        chat_template=str(payload.get("chat_template", "auto")),
    )
    return {"ok": True, "description": description}


def _refusal(message: str) -> dict[str, Any]:
    return {"ok": False, "problems": [{"line": 0, "message": message}], "count": 1}


def describe_bounded(payload: dict[str, Any]) -> dict[str, Any]:
    """`describe`, in a child process under the inspection limits; a refusal comes back as data."""
    from app.schemas import check_base_model
    from worker.runtime.bounded import LimitExceeded, run_bounded

    settings = get_settings()
    path = str(payload.get("path", ""))
    if not inside(Path(path), settings.allowed_dataset_roots):
        return _refusal(dataset_outside("dataset", path, settings))
    try:
        with enforcing_roots():
            check_base_model(str(payload.get("base_model", "")))
    except ValueError as exc:
        return _refusal(str(exc))
    try:
        answer: dict[str, Any] = run_bounded(
            "worker.data.describe:describe",
            payload,
            memory_bytes=settings.inspect_memory_mb * 1024**2,
            time_s=settings.inspect_time_limit_s,
            what=f"checking {Path(path).name}",
        )
    except LimitExceeded as exc:
        return _refusal(f"{exc}; nothing was stored")
    except RuntimeError as exc:  # the readers choked on it: still the user's file to fix
        return _refusal(str(exc))
    return answer


@shared_task(name=DESCRIBE_DATASET_TASK, queue=Queue.inspect.value, ignore_result=False)
def describe_dataset_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Validate and describe a dataset file; never raises (the web shows the error as data)."""
    try:
        return describe_bounded(payload)
    except Exception as exc:  # a file the readers choke on is still the user's to fix, not a crash
        return _refusal(f"{type(exc).__name__}: {exc}")
