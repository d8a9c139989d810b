"""A dataset file described for the web: every row checked, then token lengths, what max_seq_length cuts,
and the first rows as the model sees them (app.contracts.datasets).

The file is a user's upload, so the work runs in a child process under the inspection memory and time limits
(worker.runtime.bounded); the paths are checked against the allowed roots before anything is read.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from transformers import PreTrainedTokenizerBase

from app.config import get_settings
from app.contracts.datasets import DatasetDescription, DescribeAnswer, DescribeRequest, RowProblemOut
from app.paths import dataset_outside, inside
from app.preflight import base_model_problem
from worker.data.chat import chat_template_name
from worker.data.describe_pairs import describe_pairs
from worker.data.encode import encode_all, learns_something, truncate
from worker.data.files import read_dataset, validate_dataset
from worker.data.hub import model_source
from worker.data.token_counts import histogram, segments, token_stats, trained_count

MAX_PROBLEMS = 200


def answer_description(payload: dict[str, Any]) -> DescribeAnswer:
    """The inspect task's answer: the description, or every bad row (the first 200); never raises."""
    try:
        request = DescribeRequest.model_validate(payload)
    except ValidationError as exc:
        return _refusal(f"the request to describe a dataset is malformed: {exc}")
    try:
        return describe_bounded(request)
    except Exception as exc:  # a file the readers choke on is still the user's to fix, not a crash
        return _refusal(f"{type(exc).__name__}: {exc}")


def describe_bounded(request: DescribeRequest) -> DescribeAnswer:
    """`describe`, in a child process under the inspection limits; a refusal comes back as data."""
    from worker.runtime.bounded import LimitExceeded, run_bounded

    settings = get_settings()
    if not inside(Path(request.path), settings.allowed_dataset_roots):
        return _refusal(dataset_outside("dataset", request.path, settings))
    base_model, problem = base_model_problem(request.base_model, settings, enforce_roots=True)
    if problem:
        return _refusal(problem)
    try:
        answer: dict[str, Any] = run_bounded(
            "worker.data.describe:describe",
            request.model_copy(update={"base_model": base_model}).model_dump(mode="json"),
            memory_bytes=settings.inspect_memory_mb * 1024**2,
            time_s=settings.inspect_time_limit_s,
            what=f"checking {Path(request.path).name}",
        )
    except LimitExceeded as exc:
        return _refusal(f"{exc}; nothing was stored")
    except RuntimeError as exc:  # the readers choked on it: still the user's file to fix
        return _refusal(str(exc))
    return DescribeAnswer.model_validate(answer)


def describe(payload: dict[str, Any]) -> dict[str, Any]:
    """The child's work (a DescribeAnswer as JSON-ready data): the rows' problems, else the description."""
    request = DescribeRequest.model_validate(payload)
    problems = validate_dataset(request.path)
    if problems:
        shown = [RowProblemOut(line=p.line, message=p.message) for p in problems[:MAX_PROBLEMS]]
        return DescribeAnswer(ok=False, problems=shown, count=len(problems)).model_dump(mode="json")
    description = describe_dataset(
        request.path,
        _tokenizer(request.base_model),
        max_seq_length=request.max_seq_length,
        train_on_prompt=request.train_on_prompt,
        chat_template=request.chat_template,
    )
    return DescribeAnswer(ok=True, description=description).model_dump(mode="json", exclude_unset=True)


def _refusal(message: str) -> DescribeAnswer:
    return DescribeAnswer(ok=False, problems=[RowProblemOut(line=0, message=message)], count=1)


@lru_cache(maxsize=4)
def _tokenizer(base_model: str) -> Any:
    # The inspector describes many files with few tokenizers: load each once.
    from transformers import AutoTokenizer

    source = model_source(base_model)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=get_settings().allow_trust_remote_code)


def describe_dataset(
    path: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_seq_length: int,
    train_on_prompt: bool = False,
    chat_template: str = "auto",
) -> DatasetDescription:
    """What the UI and CLI show about a dataset: rows, shape, fields, the token-length
    distribution before cutting (nearest-rank percentiles; histogram bin i counts lengths in
    [edges[i], edges[i+1])), rows max_seq_length would cut or drop, the tokens the loss falls on after
    cutting, and the first 3 kept rows as the model sees them, in trained and untrained segments."""
    path = Path(path)
    found = read_dataset(path)
    found.raise_for_problems()
    if found.shape in ("preference", "unpaired"):
        return describe_pairs(found, path, tokenizer, max_seq_length=max_seq_length, chat_template=chat_template)
    whole = encode_all(found.rows, tokenizer, chat_template, train_on_prompt, path)
    cut = [truncate(example, max_seq_length) for example in whole]
    kept = [(row, example) for row, example in zip(found.rows, cut, strict=True) if learns_something(example)]
    lengths = sorted(len(example["input_ids"]) for example in whole)
    truncated = sum(length > max_seq_length for length in lengths)
    return DatasetDescription.model_validate(
        {
            "file": found.name,
            "format": found.format,
            "rows": len(found.rows),
            "shape": found.shape,
            "fields": found.fields,
            "chat_template": chat_template_name(tokenizer, chat_template) if found.shape == "messages" else None,
            "max_seq_length": max_seq_length,
            "train_on_prompt": train_on_prompt,
            "tokens": token_stats(lengths),
            "histogram": histogram(lengths),
            "truncated_rows": truncated,
            "truncated_share": truncated / len(lengths),
            "dropped_rows": len(found.rows) - len(kept),
            "trained_tokens": sum(trained_count(example) for _, example in kept),
            "examples": [
                {"line": row.line, "tokens": len(example["input_ids"]), "segments": segments(tokenizer, example)}
                for row, example in kept[:3]
            ],
        }
    )
