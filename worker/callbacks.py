"""What a run reports: Trainer logs -> live events in Redis and metric rows; cooperative cancel; train.log.

The database is the source of truth, so Redis trouble is logged and skipped, never raised into
the training loop.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from sqlalchemy.orm import Session, sessionmaker
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from app import events, runs

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 1.0
CANCEL_CHECK_EVERY_S = 0.5
REDIS_RETRY_AFTER_S = 10.0


class EventPublisher:
    """Publishes a run's events; while Redis is unreachable it drops them (the database keeps the metrics)."""

    def __init__(self, redis_url: str, run_id: str, *, maxlen: int) -> None:
        # Short timeouts: an unreachable host must not stall a training step for minutes.
        self.client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
        self.run_id = run_id
        self.maxlen = maxlen
        self._down_since: float | None = None

    def publish(self, event: str, data: dict[str, Any]) -> None:
        now = time.monotonic()
        if self._down_since is not None and now - self._down_since < REDIS_RETRY_AFTER_S:
            return
        try:
            events.publish(self.client, self.run_id, event, data, maxlen=self.maxlen)
        except redis.RedisError as exc:
            if self._down_since is None:
                log.warning("live events paused, Redis is unreachable (%s); the database keeps the metrics", exc)
            self._down_since = now
            return
        if self._down_since is not None:
            log.info("Redis is back; live events resume")
            self._down_since = None

    def close(self) -> None:
        self.client.close()


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


class MetricsCallback(TrainerCallback):
    """Turns each Trainer log into a metric point, and stops training when the run's cancel flag is set."""

    def __init__(self, *, run_id: str, sessions: sessionmaker[Session], publisher: EventPublisher) -> None:
        self.run_id = run_id
        self.sessions = sessions
        self.publisher = publisher
        self.cancelled = False
        self._pending: list[dict[str, Any]] = []
        self._started = time.monotonic()
        self._last_flush = 0.0
        self._last_cancel_check = 0.0
        self._last_log_time = self._started
        self._last_log_tokens = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._started = self._last_log_time = time.monotonic()
        self._last_log_tokens = state.num_input_tokens_seen

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        point = self.point_from_log(state, logs or {})
        if point is None:
            return
        log.info("step %d %s loss %s lr %s", point["step"], point["kind"], point["loss"], point["learning_rate"])
        self.publisher.publish("metric", point)
        self._pending.append(point)
        if time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
            self.flush()

    def point_from_log(self, state: TrainerState, logs: dict[str, Any]) -> dict[str, Any] | None:
        """A metric point, or None for logs that carry no loss (the end-of-training summary)."""
        if "eval_loss" in logs:
            kind, loss = "eval", _number(logs["eval_loss"])
        elif "loss" in logs:
            kind, loss = "train", _number(logs["loss"])
        else:
            return None
        now = time.monotonic()
        tokens_seen = int(logs.get("num_input_tokens_seen", state.num_input_tokens_seen) or 0)
        point: dict[str, Any] = {
            "step": state.global_step,
            "kind": kind,
            "time": round(now - self._started, 3),
            "epoch": _number(logs.get("epoch", state.epoch)),
            "loss": loss,
            "learning_rate": _number(logs.get("learning_rate")),
            "grad_norm": _number(logs.get("grad_norm")),
            "tokens_per_sec": None,
            "tokens_seen": tokens_seen or None,
        }
        if kind == "train":
            # Throughput between two logs, so a slow start (loading, compiling) does not drag the number down.
            elapsed = now - self._last_log_time
            if tokens_seen and elapsed > 0:
                point["tokens_per_sec"] = round((tokens_seen - self._last_log_tokens) / elapsed, 1)
            self._last_log_time, self._last_log_tokens = now, tokens_seen
        return point

    def flush(self) -> None:
        """Write the points logged since the last flush in one transaction."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        points, self._pending = self._pending, []
        with self.sessions() as session:
            runs.add_metrics(session=session, run_id=self.run_id, points=points)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        now = time.monotonic()
        if now - self._last_cancel_check < CANCEL_CHECK_EVERY_S:
            return
        self._last_cancel_check = now
        with self.sessions() as session:
            if runs.cancel_requested(session=session, run_id=self.run_id):
                log.info("cancel requested; stopping after step %d", state.global_step)
                self.cancelled = True
                control.should_training_stop = True

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.flush()


@contextlib.contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Copy this process's log records (ours and transformers') into the run's train.log while it trains."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # transformers' loggers do not propagate to the root (except under CI), so they need the handler too.
    loggers = [logging.getLogger()]
    if not logging.getLogger("transformers").propagate:
        loggers.append(logging.getLogger("transformers"))
    ours = logging.getLogger("worker")
    old_level = ours.level
    ours.setLevel(logging.INFO)
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        ours.setLevel(old_level)
        handler.close()


def tail_lines(path: Path, lines: int = 20) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return []
