"""The inspect task that validates and describes a dataset file for the web (row problems or statistics)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import shared_task

from app.queue import DESCRIBE_DATASET_TASK, Queue

MAX_PROBLEMS = 200


@lru_cache(maxsize=4)
def _tokenizer(base_model: str) -> Any:
    # The inspector describes many files with few tokenizers: load each once.
    from transformers import AutoTokenizer

    from app.config import get_settings

    return AutoTokenizer.from_pretrained(base_model, trust_remote_code=get_settings().allow_trust_remote_code)


def describe(payload: dict[str, Any]) -> dict[str, Any]:
    """{"ok": False, "problems": [...], "count": n} for a file with bad rows, else {"ok": True, "description"}."""
    from worker.data import describe_dataset
    from worker.datasets import validate_dataset

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


@shared_task(name=DESCRIBE_DATASET_TASK, queue=Queue.inspect.value, ignore_result=False)
def describe_dataset_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Validate and describe a dataset file; never raises (the web shows the error as data)."""
    try:
        return describe(payload)
    except Exception as exc:  # a file the readers choke on is still the user's to fix, not a crash
        return {"ok": False, "problems": [{"line": 0, "message": f"{type(exc).__name__}: {exc}"}], "count": 1}
