"""What a run reports: Trainer logs -> live events in Redis and metric rows; checkpoints (and the clock a resumed
run continues from); when to stop (cancel, a lost lease, a NaN loss); train.log.

The database is the source of truth, so Redis trouble is logged and skipped, never raised into
the training loop (worker/runtime/publisher.py sends the events from a thread of its own).

The training thread touches no database while it steps: a thread of the callback's own (`loradeck-control-*`)
writes the metric points queued since its last write every FLUSH_EVERY_S and reads the run's cancel and stop
flags when told to; each step's end only looks at what it found. The web tells it through Redis
(app.events.nudge, on the run's control channel) right after setting a flag, so a cancel or stop lands at the end
of the step in progress; the thread also reads the flags every FLAGS_FALLBACK_S in case a nudge was lost, and
every CONTROL_EVERY_S while it cannot listen to Redis.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from app import runs
from app.contracts.events import CheckpointEvent, LogEvent, MetricEvent
from app.models import Metric
from app.rundir import checkpoint_name
from worker.data.hub import name_the_base
from worker.engine.hardware import Throughput
from worker.runtime.lease import WORKER_STOPPING, Lease
from worker.runtime.nudges import Nudges
from worker.runtime.publisher import EventPublisher, EventSink

log = logging.getLogger(__name__)

# The control thread's beat: how often it wakes to see whether a write is due, and how often it reads the
# cancel/stop flags while Redis cannot tell it (a primary-key read: 0.08 ms in a loop, 0.5-0.7 ms of CPU
# between two training steps that have evicted its code from the caches).
CONTROL_EVERY_S = 0.5
# With Redis listening, the flags are read when a nudge comes, and this often besides (a nudge lost in a Redis
# restart delays a cancel by this much at most). Reading them every beat was 0.13% of a CPU run's time.
FLAGS_FALLBACK_S = 5.0
# How often the control thread writes the metric points logged since its last write (one transaction: ~1.1 ms of
# CPU in situ on its own connection). The live chart has them from Redis within LIVE_LINGER_S; the database
# (history, the runs list's and the API's step) lags by this much. Each second it was 0.13% of a CPU run's time;
# 5 s let a fast run's API step trail by tens of steps (a two-process hand-back test overshot its 30 steps).
FLUSH_EVERY_S = 2.0
# Written into each checkpoint next to Trainer's files: what a resumed run continues its clock from.
RESUME_STATE_FILE = "loradeck_state.json"

__all__ = ["EventPublisher", "EventSink", "MetricsCallback", "TrainingDiverged", "run_log", "tail_lines"]


def _number(value: Any) -> float | None:
    # NaN and infinity are not JSON (the browser's JSON.parse refuses them): a metric point holds None there.
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


class TrainingDiverged(RuntimeError):
    """The loss (or the gradient norm) stopped being a finite number; training cannot recover from that."""

    def __init__(self, *, step: int, name: str, value: float) -> None:
        super().__init__(f"{name} became {value} at step {step}")
        self.step, self.name, self.value = step, name, value


class MetricsCallback(TrainerCallback):
    """Turns each Trainer log into a metric point, and stops training when the run's cancel flag is set,
    when its lease is lost (another worker owns the run now), or when the loss is no longer a number."""

    def __init__(
        self,
        *,
        run_id: str,
        sessions: sessionmaker[Session],
        publisher: EventPublisher,
        lease: Lease | None = None,
        named: tuple[str, ...] = (),
    ) -> None:
        self.run_id = run_id
        self.named = named  # the objective's named values to keep from each log (app.objectives: Series.key)
        self.sessions = sessions
        self.publisher = publisher
        self.lease = lease
        self.cancelled = False
        self.stopped = False  # "Stop": a checkpoint at this step, then the adapter is saved as for a success
        self.lease_lost = False
        self.handed_back = False  # stopped for a worker shutdown; resumes elsewhere
        self._pending: list[dict[str, Any]] = []
        self._queued = threading.Lock()  # held for an append or a swap of _pending only
        self._writing = threading.Lock()  # one flush at a time, so the points reach the database in order
        self._cancel_requested = threading.Event()  # set by the control thread; read at each step's end
        self._stop_requested = threading.Event()
        self._closed = threading.Event()
        self._control: threading.Thread | None = None
        self._nudges: Nudges | None = None
        self._started = time.monotonic()
        self._last_flush = 0.0
        self._last_log_time = self._started
        self._last_log_tokens = 0
        self.throughput = Throughput()  # MFU and GPU memory beside each point, from the hardware found at begin

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # Trainer has restored its state from the checkpoint by now: global_step > 0 means a resume, and
        # num_input_tokens_seen already continues from the checkpoint. The clock does so from here.
        elapsed = self._elapsed_at(Path(str(args.output_dir)), state.global_step) if state.global_step else 0.0
        self._last_log_time = time.monotonic()
        self._started = self._last_log_time - elapsed
        self._last_log_tokens = state.num_input_tokens_seen
        self.record_hardware(args, kwargs.get("model"), kwargs.get("train_dataloader"))
        self.start_control()
        self.publisher.publish(
            LogEvent(
                lines=[f"training steps {state.global_step + 1} to {state.max_steps}"],
                step=state.global_step,
                max_steps=state.max_steps,
            )
        )

    def record_hardware(self, args: TrainingArguments, model: Any, loader: Any) -> None:
        """Run.hardware, once per start (a resumed run may train on another GPU than its first attempt)."""
        hardware = self.throughput.begin(model, getattr(loader, "dataset", None), args.world_size)
        with self.sessions() as session:
            runs.record_hardware(session=session, run_id=self.run_id, hardware=hardware)
        figures = (hardware["device"], hardware["peak_flops"], hardware["flops_per_token"])
        log.info("training on %s: peak %s FLOPS, %s FLOPs a token", *figures)

    def _elapsed_at(self, checkpoints: Path, step: int) -> float:
        """Training seconds up to `step`: from the checkpoint's own record, else from the last metric point."""
        try:
            saved = json.loads((checkpoints / checkpoint_name(step) / RESUME_STATE_FILE).read_text())
            return float(saved["time"])
        except (OSError, ValueError, KeyError, TypeError):
            with self.sessions() as session:
                last = session.scalar(
                    select(Metric.time)
                    .where(Metric.run_id == self.run_id, Metric.step <= step)
                    .order_by(Metric.step.desc(), Metric.id.desc())
                    .limit(1)
                )
            return float(last or 0.0)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        checkpoint = Path(str(args.output_dir)) / checkpoint_name(state.global_step)
        elapsed = round(time.monotonic() - self._started, 3)
        if checkpoint.is_dir():
            (checkpoint / RESUME_STATE_FILE).write_text(json.dumps({"step": state.global_step, "time": elapsed}))
        self.flush()  # the metric points up to the checkpoint are in the database before we go on
        log.info("checkpoint saved at step %d", state.global_step)
        self.publisher.publish(CheckpointEvent(step=state.global_step, path=checkpoint.name))

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
        values = logs or {}
        if point["kind"] == "eval":
            log.info("step %d eval loss %s token accuracy %s", point["step"], point["loss"], point["token_accuracy"])
        else:
            log.info(
                "step %d train loss %s lr %s grad_norm %s",
                point["step"],
                values.get("loss"),
                point["learning_rate"],
                values.get("grad_norm"),
            )
        self.publisher.publish(MetricEvent(**point))
        with self._queued:
            self._pending.append(point)
        # Under fp16 the grad scaler meets infinite gradients now and then and skips that step by design.
        diverged = _first_not_finite(values, grad_norm=not args.fp16)
        if diverged is not None:
            # Stop at the step it happened: every step from here on would only train on NaN weights.
            self.flush()
            raise TrainingDiverged(step=state.global_step, name=diverged[0], value=diverged[1])
        # No database write here: the control thread writes the points every FLUSH_EVERY_S.

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
        if kind == "eval":
            point["token_accuracy"] = _number(logs.get("eval_token_accuracy"))
        prefix = "eval_" if kind == "eval" else ""
        point["values"] = {key: _number(logs[prefix + key]) for key in self.named if prefix + key in logs}
        if kind == "train":
            # Throughput between two logs, so a slow start (loading, compiling) does not drag the number down.
            elapsed = now - self._last_log_time
            if tokens_seen and elapsed > 0:
                point["tokens_per_sec"] = round((tokens_seen - self._last_log_tokens) / elapsed, 1)
            self._last_log_time, self._last_log_tokens = now, tokens_seen
        # MFU over the same interval as tokens/s (train points); GPU memory at every point.
        figures = self.throughput.figures(point["tokens_per_sec"] if kind == "train" else None)
        return point | figures

    def flush(self, connection: Connection | None = None) -> None:
        """Write the points logged since the last flush in one transaction (from the control thread, on its own
        connection, and at a checkpoint, a divergence and the end on the training thread, in a session of its
        own; a failed write raises, its points kept)."""
        with self._writing:
            self._last_flush = time.monotonic()
            with self._queued:
                points, self._pending = self._pending, []  # on_log appends to the new list meanwhile
            if not points:
                return
            try:
                self._write(points, connection)
            except BaseException:
                with self._queued:
                    self._pending[:0] = points  # written with the next flush, still in order
                raise

    def _write(self, points: list[dict[str, Any]], connection: Connection | None) -> None:
        if connection is None:
            with self.sessions() as session:
                self._write_on(session, points)
        else:
            try:
                self._write_on(connection, points)
            except BaseException:
                connection.rollback()
                raise

    def _write_on(self, session: Session | Connection, points: list[dict[str, Any]]) -> None:
        if self.lease is None:
            runs.add_metrics(session=session, run_id=self.run_id, points=points)
            return
        owner = self.lease.worker
        if not runs.add_owned_metrics(session=session, run_id=self.run_id, worker=owner, points=points):
            self.lease.lost = True  # taken away between two renewals: stop at the next step, write nothing

    def start_control(self) -> None:
        """Start the control thread (once): it reads the flags at once, then when nudged (module docstring)."""
        if self._control is not None:
            return
        self._closed.clear()
        self._control = threading.Thread(target=self._control_loop, name=f"loradeck-control-{self.run_id}", daemon=True)
        self._control.start()

    def close(self) -> None:
        """Stop the control thread (the end of training, or a failure); the caller flushes what is left. The
        thread, waiting for a nudge, is woken."""
        self._closed.set()
        if self._nudges is not None:
            self._nudges.wake()
        control, self._control = self._control, None
        if control is not None and control is not threading.current_thread():
            control.join(timeout=30)

    def read_flags(self, connection: Connection) -> None:
        """One read of the run's cancel and stop flags, kept for the training thread's next step end."""
        cancel, stop = runs.stop_flags(session=connection, run_id=self.run_id)
        if cancel:
            self._cancel_requested.set()
        if stop:
            self._stop_requested.set()

    def _control_loop(self) -> None:
        # Connections for the thread's life: a read costs one primary-key query and a write one transaction, not
        # a session and a checkout (PostgreSQL's pool pings each checkout). In situ, between two training steps
        # that evicted its code from the caches, a write through a fresh session took ~2 ms of CPU: 0.23% of a
        # CPU run's time at one a second.
        engine = self.sessions.kw["bind"]
        connection: Connection | None = None
        writer: Connection | None = None
        nudges = self._nudges = Nudges(self.run_id, self._closed)  # never raises: not listening at worst
        next_read = 0.0  # subscribed first, then read: a flag set before the subscription is found by this read
        try:
            while True:
                if not nudges.listening:  # lost Redis: the beat's reads until it listens again
                    next_read = min(next_read, time.monotonic() + CONTROL_EVERY_S)
                try:
                    # Autocommit: each read is its own transaction, none is held between two beats (SQLite's WAL
                    # snapshot, PostgreSQL's idle in transaction), and no BEGIN or ROLLBACK goes with it.
                    if time.monotonic() >= next_read:
                        connection = connection or engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                        self.read_flags(connection)
                        next_read = time.monotonic() + (FLAGS_FALLBACK_S if nudges.listening else CONTROL_EVERY_S)
                    if time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
                        writer = writer or engine.connect()
                        self.flush(writer)
                except SQLAlchemyError as exc:  # the database may be back at the next beat; training goes on
                    log.warning("run %s: the database did not answer the control thread: %s", self.run_id, exc)
                    for broken in (connection, writer):
                        if broken is not None:
                            with contextlib.suppress(SQLAlchemyError):
                                broken.close()
                    connection = writer = None
                except Exception:  # a defect must not end the thread: cancel, stop and the points depend on it
                    log.exception("run %s: the control thread's beat failed; it goes on", self.run_id)
                if nudges.wait(CONTROL_EVERY_S):
                    next_read = 0.0  # told: read the flags now
                if self._closed.is_set():
                    return
        finally:
            nudges.close()
            for held in (connection, writer):
                if held is not None:
                    with contextlib.suppress(SQLAlchemyError):
                        held.close()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.lease is not None and self.lease.lost:
            log.warning("lease lost; stopping after step %d (the run's new worker resumes it)", state.global_step)
            self.lease_lost = True
            control.should_training_stop = True
            return
        if WORKER_STOPPING.is_set() and not self.handed_back:
            log.info("the worker is stopping: a checkpoint at step %d, then back to the queue", state.global_step)
            self.handed_back = True
            control.should_save = args.save_strategy != "no"  # saved before training stops, at this very step
            control.should_training_stop = True
            return
        # What the control thread last read (no database here): the cancel lands at most CONTROL_EVERY_S later
        # than a read at this very step would have.
        if self._cancel_requested.is_set():
            log.info("cancel requested; stopping after step %d", state.global_step)
            self.cancelled = True
            control.should_training_stop = True
        elif self._stop_requested.is_set() and not self.stopped:
            log.info("stop requested: a checkpoint and the adapter at step %d, then the run ends", state.global_step)
            self.stopped = True
            control.should_save = True  # saved at this very step, before training stops
            control.should_training_stop = True

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.flush()  # the control thread stops in fit() (worker.engine.steps), once train() has returned


def _first_not_finite(logs: dict[str, Any], *, grad_norm: bool) -> tuple[str, float] | None:
    """("loss", nan) when the logged loss (or eval loss, or gradient norm) is NaN or infinite, else None."""
    for name in ("loss", "eval_loss", "grad_norm") if grad_norm else ("loss", "eval_loss"):
        value = logs.get(name)
        if isinstance(value, int | float) and not math.isfinite(value):
            return name, float(value)
    return None


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


class BaseNamedPublicly(TrainerCallback):
    """Each checkpoint's adapter names its base without this server's paths (worker.data.hub.name_the_base),
    before the checkpoint is announced: it comes first among the trainer's callbacks."""

    def __init__(self, base_model: str) -> None:
        self.base_model = base_model

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        checkpoint = Path(str(args.output_dir)) / checkpoint_name(state.global_step)
        if checkpoint.is_dir():
            name_the_base(checkpoint, self.base_model)
