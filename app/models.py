"""ORM models: runs, their metric points and their artifacts. The database is the source of truth."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex[:12]


class Base(DeclarativeBase):
    pass


class RunStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    interrupted = "interrupted"
    stopped = "stopped"  # stopped early on request, its adapter saved: a success with fewer steps

    @property
    def finished(self) -> bool:
        return self in (RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled, RunStatus.stopped)


class ArtifactKind(enum.StrEnum):
    adapter = "adapter"
    merged = "merged"
    checkpoint = "checkpoint"
    gguf = "gguf"  # the merged model as one .gguf for llama.cpp and Ollama, with a Modelfile


class ArtifactStatus(enum.StrEnum):
    pending = "pending"
    running = "running"
    ready = "ready"
    failed = "failed"


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default=RunStatus.queued, index=True)
    spec: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # "Stop": end at the next step with a checkpoint and the adapter saved (status stopped).
    stop_requested: Mapped[bool] = mapped_column(default=False, server_default="0")
    # Archived runs are kept but hidden from the runs list and the pickers.
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(String(200))  # the lease holder, host:pid (not RunSpec.worker)
    error: Mapped[str | None] = mapped_column(Text)
    params_all: Mapped[int | None] = mapped_column(BigInteger)
    params_trainable: Mapped[int | None] = mapped_column(BigInteger)
    step: Mapped[int] = mapped_column(Integer, default=0)
    max_steps: Mapped[int | None] = mapped_column(Integer)
    last_loss: Mapped[float | None] = mapped_column(Float)
    # The worker's lease on a running run: renewed every few seconds; a reaper interrupts the run when it
    # stops changing (worker/runtime/lease.py, worker/runtime/reaper.py).
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # workers lost while training it
    # After training: task metrics on eval rows and the regression prompts' answers, base beside adapter
    # (app/contracts/evaluation.py has the shape).
    evaluation: Mapped[dict | None] = mapped_column(JSON)
    # What it trained on, for MFU (worker.engine.hardware): {"device", "peak_flops" (None: not in the table),
    # "flops_per_token", "gpus", "mean_row_tokens", "no_mfu" (what MFU needs that the run lacks)}.
    hardware: Mapped[dict | None] = mapped_column(JSON)
    # Each throughput switch as the worker resolved it: [{"name", "asked", "chosen", "reason"}, ...].
    fast_paths: Mapped[list | None] = mapped_column(JSON)

    metrics: Mapped[list[Metric]] = relationship(back_populates="run", cascade="all, delete-orphan")
    artifacts: Mapped[list[Artifact]] = relationship(back_populates="run", cascade="all, delete-orphan")

    @property
    def evaluating(self) -> dict[str, int] | None:
        """{"done", "total"} rows while base and adapter answer the eval rows after training; else None."""
        progress = (self.evaluation or {}).get("progress")
        return progress if self.status == RunStatus.running and isinstance(progress, dict) else None

    @property
    def params_percent(self) -> float | None:
        if not self.params_all or self.params_trainable is None:
            return None
        return 100.0 * self.params_trainable / self.params_all


class Metric(Base):
    """One logged point: a train log (loss, learning rate, grad norm, throughput) or an eval."""

    __tablename__ = "metrics"
    __table_args__ = (
        Index("ix_metrics_run_step", "run_id", "step"),
        Index("ix_metrics_run_kind_step", "run_id", "kind", "step"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(10), default="train")
    time: Mapped[float] = mapped_column(Float)
    epoch: Mapped[float | None] = mapped_column(Float)
    loss: Mapped[float | None] = mapped_column(Float)
    learning_rate: Mapped[float | None] = mapped_column(Float)
    grad_norm: Mapped[float | None] = mapped_column(Float)
    tokens_per_sec: Mapped[float | None] = mapped_column(Float)
    tokens_seen: Mapped[int | None] = mapped_column(BigInteger)
    # Eval points: the share of the eval data's trained label tokens whose argmax prediction is right.
    token_accuracy: Mapped[float | None] = mapped_column(Float)
    # The objective's own named values at this point (TRL's names: rewards/margins, logps/chosen, ...), as
    # app.objectives declares them; eval points carry them without the eval_ prefix.
    values: Mapped[dict | None] = mapped_column(JSON)
    # Train points on a GPU: model FLOPs utilisation over the logging interval (None where the GPU's peak is
    # unknown, or on the CPU), and torch's allocated / peak-allocated bytes at the log.
    mfu: Mapped[float | None] = mapped_column(Float)
    gpu_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    gpu_peak_bytes: Mapped[int | None] = mapped_column(BigInteger)

    run: Mapped[Run] = relationship(back_populates="metrics")


class Artifact(Base):
    """A file tree a run produced (adapter, merged model, GGUF export, checkpoint), below the run's directory."""

    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default=ArtifactStatus.pending)
    path: Mapped[str | None] = mapped_column(String(500))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    files: Mapped[list | None] = mapped_column(JSON)
    details: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    run: Mapped[Run] = relationship(back_populates="artifacts")


class Dataset(Base):
    """An uploaded dataset file, stored once under the data dir by the sha256 of its content."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int | None] = mapped_column(Integer)
    shape: Mapped[str | None] = mapped_column(String(40))
    description: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class OpenAIJob(Base):
    """What a run created through OpenAI's fine-tuning API (`/v1/fine_tuning/jobs`) was asked for, beside the
    run itself: a run without one is a dashboard run, listed as a job all the same."""

    __tablename__ = "openai_jobs"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(200))  # the model id as the request named it
    suffix: Mapped[str | None] = mapped_column(String(64))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(20), default="supervised")
    # The values the job trains with, "auto" ones resolved: {"n_epochs", "batch_size", ...}.
    hyperparameters: Mapped[dict] = mapped_column(JSON)
    seed: Mapped[int | None] = mapped_column(Integer)
    job_metadata: Mapped[dict | None] = mapped_column("metadata", JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    """A key for `/v1` with login on: only its SHA-256 is kept; the key itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))  # the key's first characters, to tell keys apart
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
