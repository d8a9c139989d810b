"""The live events of a run (its Redis Stream, then server-sent events) and of a playground request.

Each event type is one model; `RUN_EVENTS` and `PLAYGROUND_EVENTS` map the names to them. An event is
written as the fields its producer set (`exclude_unset`), so a page reads exactly what was said.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class LiveEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: ClassVar[str]

    def data(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


# --- a run's stream
class StatusEvent(LiveEvent):
    type = "status"
    status: str
    error: str | None = None


class ParamsEvent(LiveEvent):
    type = "params"
    all: int
    trainable: int
    percent: float


class MetricEvent(LiveEvent):
    """One logged point, as the metrics table stores it."""

    type = "metric"
    step: int
    kind: str = "train"
    time: float
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_sec: float | None = None
    tokens_seen: int | None = None
    # Eval points only: the share of the eval data's trained label tokens the model predicted right (argmax).
    token_accuracy: float | None = None
    # The objective's named values (app.objectives: rewards/margins, ...); empty for SFT.
    values: dict[str, float | None] = {}
    # Train points: model FLOPs utilisation over the interval tokens_per_sec covers (0..1; None on the CPU, a GPU
    # not in worker/engine/flops.py's table, or a model shape without a FLOPs formula).
    mfu: float | None = None
    # On a GPU: torch's allocated bytes at the log, and the most allocated since training began; None on the CPU.
    gpu_memory_bytes: int | None = None
    gpu_peak_bytes: int | None = None


class SampledCompletion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    reward: float = Field(description="The weighted sum of the run's rewards, as GRPO trains on it.")
    rewards: dict[str, float] = Field(default_factory=dict, description="Each reward function's score.")


class SamplesEvent(LiveEvent):
    """GRPO: a handful of the completions the policy wrote for one prompt at a training step, with their rewards
    (every few logging steps; the run folder's samples.jsonl keeps each event's data a line)."""

    type = "samples"
    step: int
    prompt: str
    reference: str | None = None
    completions: list[SampledCompletion]


class LogEvent(LiveEvent):
    type = "log"
    lines: list[str]
    step: int | None = None
    max_steps: int | None = None


class CheckpointEvent(LiveEvent):
    type = "checkpoint"
    step: int
    path: str


class ArtifactEvent(LiveEvent):
    """An artifact appeared or changed state (pending, running, ready, failed)."""

    type = "artifact"
    id: str
    kind: str
    status: str
    size_bytes: int | None = None
    sha256: str | None = None
    error: str | None = None
    details: dict[str, Any] | None = None


def artifact_event(artifact: Any) -> ArtifactEvent:
    """The event announcing an artifact row (app.models.Artifact) as it now is."""
    return ArtifactEvent(
        id=artifact.id,
        kind=artifact.kind,
        status=artifact.status,
        size_bytes=artifact.size_bytes,
        sha256=artifact.sha256,
        error=artifact.error,
        details=artifact.details,
    )


class EvaluatingEvent(LiveEvent):
    """Base and adapter have answered `done` of `total` eval rows and regression prompts."""

    type = "evaluating"
    done: int
    total: int


class EvaluationEvent(LiveEvent):
    """The evaluation is stored; the page fetches it whole (app.contracts.evaluation)."""

    type = "evaluation"
    base: dict[str, Any] | None = None
    task: dict[str, Any] | None = None
    task_skipped: str | None = None
    error: str | None = None


class DoneEvent(LiveEvent):
    type = "done"
    status: str


RUN_EVENTS: dict[str, type[LiveEvent]] = {
    model.type: model
    for model in (
        StatusEvent,
        ParamsEvent,
        MetricEvent,
        SamplesEvent,
        LogEvent,
        CheckpointEvent,
        ArtifactEvent,
        EvaluatingEvent,
        EvaluationEvent,
        DoneEvent,
    )
}


# --- a playground request's stream
class StartEvent(LiveEvent):
    type = "start"
    sides: list[str]
    prompts: list[str] | None = None  # what each side is given, its chat markup and special tokens included


class TokenEvent(LiveEvent):
    type = "token"
    side: int
    text: str


class AnsweredEvent(LiveEvent):
    type = "done"
    texts: list[str]
    seconds: float


class ErrorEvent(LiveEvent):
    type = "error"
    message: str


PLAYGROUND_EVENTS: dict[str, type[LiveEvent]] = {
    model.type: model for model in (StartEvent, TokenEvent, AnsweredEvent, ErrorEvent)
}
FINAL_PLAYGROUND_EVENTS = (AnsweredEvent.type, ErrorEvent.type)
