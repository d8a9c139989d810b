"""The engine tests' runs, in-process: created from a spec as the form creates them, trained here as a worker
trains them, and read back as the run page reads them (the row, the metric points, the live events in Redis).
The fault tests read their runs through these too."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis

from app import runs
from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR, get_settings
from app.db import get_sessionmaker
from app.events import stream_key
from app.models import Metric, Run
from app.schemas import RunSpec

TRAIN = SAMPLE_DATASET_DIR / "train.jsonl"


@contextlib.contextmanager
def module_env(tmp_path_factory: pytest.TempPathFactory, redis_url: str, name: str) -> Iterator[Path]:
    """loradeck_env for a whole module (a module-scoped fixture's body), so the runs it trains are shared by its
    tests: a data dir of its own, a fresh database, Redis emptied; yields the data dir's root."""
    from tests.conftest import _clear_caches, fresh_database

    root = tmp_path_factory.mktemp(name)
    with fresh_database() as database_url, pytest.MonkeyPatch.context() as patch:
        for variable, value in {
            "LORADECK_DATA_DIR": str(root / "data"),
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "LORADECK_MODEL_ROOTS": str(tmp_path_factory.getbasetemp()),
            "LORADECK_DATASET_ROOTS": str(tmp_path_factory.getbasetemp()),
        }.items():
            patch.setenv(variable, value)
        _clear_caches()
        redis.Redis.from_url(redis_url).flushdb()
        from app.db import get_engine, migrate

        migrate()
        yield root
        get_engine().dispose()
        _clear_caches()


def run_spec(defaults: Mapping[str, Any] | None = None, /, **fields: Any) -> RunSpec:
    """The tiny model on the sample's training rows, then a module's `defaults`, then this run's `fields`.
    No regression prompts unless asked for: the evaluation has tests of its own; elsewhere they only cost time."""
    tiny = {"base_model": str(TINY_MODEL_DIR), "dataset": str(TRAIN), "regression_prompts": []}
    return RunSpec(**{**tiny, **(defaults or {}), **fields})


def create_run(defaults: Mapping[str, Any] | None = None, /, **fields: Any) -> str:
    """A queued run of `run_spec(defaults, **fields)`, as the form creates one; its id."""
    with get_sessionmaker()() as session:
        return runs.create_run(session=session, spec=run_spec(defaults, **fields)).id


def train_run(spec: RunSpec) -> Run:
    """A run of `spec` created, trained to its end here, and read back."""
    from worker.engine.train import run_training  # torch and transformers: only where a test trains

    with get_sessionmaker()() as session:
        run_id = runs.create_run(session=session, spec=spec).id
    run_training(run_id)
    return read_run(run_id)


def read_run(run_id: str) -> Run:
    with get_sessionmaker()() as session:
        return runs.get_run(session=session, run_id=run_id)


def train_points(run_id: str) -> list[Metric]:
    """The run's training metric points, in step order (the eval points left out)."""
    with get_sessionmaker()() as session:
        return [point for point in runs.list_metrics(session=session, run_id=run_id) if point.kind == "train"]


def read_events(run_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The run's live events, (event, data) in the order they were published to its Redis stream."""
    client = redis.Redis.from_url(get_settings().redis_url, decode_responses=True)
    entries: Any = client.xrange(stream_key(run_id))
    client.close()
    return [(fields["event"], json.loads(fields["data"])) for _id, fields in entries]


def adapter_logit_change(adapter_dir: Path) -> float:
    """How far the adapter in `adapter_dir`, loaded with stock PEFT on the tiny base, moves the base's logits
    for a few tokens: the largest change at any position, for any token."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32)
    ids = torch.tensor([[1, 10, 20, 30, 40]])
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
        return float((tuned(input_ids=ids).logits - base_logits).abs().max())


def wait_for_step(run_id: str, step: int, *, alive: Callable[[], bool], timeout: float = 120) -> None:
    """Until the run has trained `step` steps; fails, with the run's error, if `alive` says its worker is gone."""
    deadline = time.monotonic() + timeout
    while read_run(run_id).step < step:
        assert alive() and time.monotonic() < deadline, read_run(run_id).error
        time.sleep(0.1)


def train_in_thread(run_id: str, *, until_step: int, timeout: float = 120) -> threading.Thread:
    """`run_training` in a thread, as a worker runs it, returned once the run has trained `until_step` steps."""
    from worker.engine.train import run_training

    worker = threading.Thread(target=run_training, args=(run_id,))
    worker.start()
    wait_for_step(run_id, until_step, alive=worker.is_alive, timeout=timeout)
    return worker
