"""What a finished run's checkpoints are good for: resuming the run from one, or taking one's adapter as the run's.

A cancelled or failed run keeps its checkpoints (the newest `save_total_limit`); without these it would be a
dead end. Both raise domain errors (app.errors) that say what to do instead.
"""

from __future__ import annotations

import logging

import redis
from pydantic import ValidationError
from sqlalchemy import delete
from sqlalchemy.orm import Session

from app import runs
from app.config import Settings
from app.errors import Conflict, InvalidInput, NotFound, Unavailable
from app.events import senders_key, stream_key
from app.models import Artifact, ArtifactKind, Run, RunStatus
from app.queue import enqueue_train, reaching_redis
from app.rundir import ADAPTER_FILES, Checkpoint, RunDir
from app.schemas import RunSpec
from app.services.runs import artifacts_in_progress

log = logging.getLogger(__name__)
# A succeeded run has trained every step and has its adapter; the others may go on from a checkpoint.
RESUMABLE = (RunStatus.cancelled, RunStatus.failed, RunStatus.stopped)
MADE_FROM_ADAPTER = (ArtifactKind.adapter, ArtifactKind.merged, ArtifactKind.gguf)


def use_checkpoint_as_adapter(*, session: Session, settings: Settings, run_id: str, step: int) -> Artifact:
    """The checkpoint of `step`'s adapter becomes the run's adapter artifact, so merge, GGUF export, the
    playground and the adapter's download work on it; an earlier adapter goes with what was made of it (its
    merged model, its exports) and with the evaluation that compared it with the base."""
    run = _finished_run(session, run_id, "use one of its checkpoints as the adapter")
    run_dir = RunDir.of(run_id, settings)
    checkpoint = _complete_checkpoint(run_dir, step)
    missing = [name for name in ADAPTER_FILES if not (checkpoint.path / name).is_file()]
    if missing:
        raise Conflict(f"{checkpoint.name} holds no adapter ({', '.join(missing)} missing); pick another checkpoint")
    if run.evaluation is not None and runs.has_adapter(session=session, run_id=run_id):
        run.evaluation = None  # it compared the base with the adapter being replaced
    _drop_adapter(session, run_dir)
    run_dir.adopt_checkpoint(step)
    details = {"format": "peft", "method": run.spec.get("method"), "checkpoint_step": step}
    artifact = runs.adapter_artifact(run_dir, details)
    session.add(artifact)
    session.commit()
    log.info("run %s: the adapter of %s is the run's adapter now", run_id, checkpoint.name)
    return artifact


def resume_from_checkpoint(
    *, session: Session, settings: Settings, run_id: str, step: int, max_steps: int | None = None
) -> Run:
    """A new attempt of the run from the checkpoint of `step`: queued again, trained on by a worker as a run
    interrupted there is (its metric points and checkpoints past `step` go, and so do its adapter and what
    was made of it: the attempt saves its own). `max_steps`: train to that step instead of the spec's."""
    run = _finished_run(session, run_id, "resume it")
    if run.status not in RESUMABLE:
        raise Conflict(
            f"run {run_id} has {run.status}: it trained all its steps; duplicate it to train a new one longer"
        )
    run_dir = RunDir.of(run_id, settings)
    checkpoint = _complete_checkpoint(run_dir, step)
    spec = dict(run.spec)
    if max_steps is not None:
        if max_steps <= step:
            raise InvalidInput.fields({"max_steps": f"must be above the checkpoint's step {step}"})
        spec["max_steps"] = max_steps
        try:
            RunSpec.model_validate(spec)
        except ValidationError as exc:  # RunSpec's own limits on max_steps
            raise InvalidInput(errors=[dict(error) for error in exc.errors(include_url=False)]) from exc
    worker = str(spec.get("worker") or "")  # pinned to a worker: back to that one, as when it was submitted
    with reaching_redis("the run was not resumed"):
        # Checked before anything changes; the stream is dropped as well: its `done` would end a page
        # following the new attempt (the history is in the database; live events start again).
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            client.ping()
            client.delete(stream_key(run_id), senders_key(run_id))
        finally:
            client.close()
    _drop_adapter(session, run_dir)
    run_dir.remove_checkpoints_after(checkpoint.step)
    runs.truncate_metrics(session=session, run_id=run_id, after_step=checkpoint.step)
    previous, finished_at = run.status, run.finished_at
    run.spec, run.max_steps = spec, spec.get("max_steps")
    run.status, run.cancel_requested, run.stop_requested = RunStatus.queued, False, False
    run.error, run.finished_at, run.evaluation, run.worker = None, None, None, None
    session.commit()
    try:
        with reaching_redis("the run was not resumed"):
            enqueue_train(run_id, worker)
    except Unavailable:
        run.status, run.finished_at = previous, finished_at  # nothing will claim it: it stays as it ended
        session.commit()
        raise
    log.info("run %s resumes from %s", run_id, checkpoint.name)
    return run


def _finished_run(session: Session, run_id: str, what: str) -> Run:
    run = runs.get_run(session=session, run_id=run_id)
    if not RunStatus(run.status).finished:
        raise Conflict(f"run {run_id} is {run.status}: cancel or stop it first, then {what}")
    if artifacts_in_progress(session=session, run_id=run_id):
        raise Conflict(f"a merge or an export of run {run_id} is being made: wait for it to end, then {what}")
    return run


def _complete_checkpoint(run_dir: RunDir, step: int) -> Checkpoint:
    complete = run_dir.checkpoints(complete_only=True)
    found = next((checkpoint for checkpoint in complete if checkpoint.step == step), None)
    if found is None:
        have = ", ".join(str(checkpoint.step) for checkpoint in complete) or "none"
        raise NotFound(f"run {run_dir.run_id} has no complete checkpoint of step {step}; it has: {have}")
    return found


def _drop_adapter(session: Session, run_dir: RunDir) -> None:
    """The run's adapter, merged model and exports, rows and files: made from an adapter being replaced."""
    session.execute(
        delete(Artifact).where(Artifact.run_id == run_dir.run_id, Artifact.kind.in_(list(MADE_FROM_ADAPTER)))
    )
    session.commit()
    run_dir.remove_adapter()
