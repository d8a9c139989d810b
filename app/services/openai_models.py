"""OpenAI's models: the base models loradeck can answer with, and every run whose adapter is saved, by the ids of
app.openai_ids; what a model id names (`resolve_model`), for listing and for answering with it.

A base is listed by its stable id: the bundled model, each model directory under an allowed model root, and each
hub id a run was started from. A fine-tune is listed once its run has ended with its adapter saved (succeeded, or
stopped, or a checkpoint taken as its adapter), as `ft:<base>:<suffix or loradeck>:<run id>`; its checkpoints
(`...:ckpt-step-<n>`) are not listed but answer to retrieve and to inference. Deleting a fine-tune removes its
adapter and merged model, files and rows: the run stays, with its checkpoints and metrics.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import runs
from app.config import Settings
from app.dataset_shapes import trains_with_chat
from app.errors import NotFound, Refused
from app.models import Artifact, ArtifactKind, ArtifactStatus, OpenAIJob, Run, RunStatus
from app.openai_ids import base_id, fine_tuned_id, local_bases, parse_fine_tuned, resolve_base
from app.rundir import RunDir

BASE_OWNER = "loradeck"
FINE_TUNE_OWNER = "user"  # loradeck has no organisations; OpenAI names the org that trained it


@dataclass(frozen=True)
class Target:
    """What a model id answers with: a base model (path or hub id), and over it a run's adapter, checkpoint or
    merged model; `chat`: whether messages go through the chat template (a run on prompt/completion or text rows
    never saw it)."""

    id: str
    base_model: str
    created: int
    owned_by: str
    run_id: str | None = None
    adapter_dir: Path | None = None
    merged_dir: Path | None = None
    chat_template: str = "auto"
    chat: bool = True

    def card(self) -> dict[str, Any]:
        """The model as OpenAI's `Model` object."""
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by}


def _unix(moment: datetime | None) -> int:
    if moment is None:
        return 0
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def _not_found(model_id: str) -> NotFound:
    return NotFound(f"model: the model `{model_id}` does not exist (GET /v1/models lists those loradeck has)")


def _runs_by_id(session: Session, run_ids: list[str]) -> dict[str, OpenAIJob]:
    return {job.run_id: job for job in session.scalars(select(OpenAIJob).where(OpenAIJob.run_id.in_(run_ids)))}


def _fine_tune_id(run: Run, job: OpenAIJob | None, settings: Settings, step: int | None = None) -> str:
    return fine_tuned_id(
        base_id(str(run.spec.get("base_model", "")), settings), job.suffix if job else None, run.id, step
    )


def _ready(session: Session, run_id: str) -> dict[str, Artifact]:
    """The run's ready adapter and merged model artifacts, by kind (the newest of each)."""
    found: dict[str, Artifact] = {}
    for artifact in runs.list_artifacts(session=session, run_id=run_id):
        if artifact.status == ArtifactStatus.ready and artifact.kind in (ArtifactKind.adapter, ArtifactKind.merged):
            found[artifact.kind] = artifact
    return found


def _fine_tune(run: Run, job: OpenAIJob | None, settings: Settings, model_id: str, step: int | None) -> Target:
    run_dir = RunDir.of(run.id, settings)
    spec = run.spec
    return Target(
        id=model_id,
        base_model=str(spec.get("base_model", "")),
        created=_unix(run.finished_at or run.created_at),
        owned_by=FINE_TUNE_OWNER,
        run_id=run.id,
        adapter_dir=run_dir.adapter_dir if step is None else run_dir.checkpoint_dir(step),
        chat_template=str(spec.get("chat_template", "auto")),
        chat=trains_with_chat(str(spec.get("dataset", ""))),
    )


def resolve_model(*, session: Session, settings: Settings, model_id: str) -> Target:
    """What `model_id` answers with; NotFound when it names nothing usable now (a fine-tune not finished or
    deleted, a checkpoint not on disk, a base no allowed root holds)."""
    wanted = parse_fine_tuned(model_id)
    if wanted is None:
        base = resolve_base(model_id, settings)
        known_hub = base is not None and base == model_id and model_id in _hub_bases(session, settings)
        if base is None or (base == model_id and not known_hub):
            raise _not_found(model_id)
        return Target(id=model_id, base_model=base, created=_base_created(base, session), owned_by=BASE_OWNER)
    run = session.get(Run, wanted.run_id)
    if run is None:
        raise _not_found(model_id)
    job = session.get(OpenAIJob, run.id)
    if _fine_tune_id(run, job, settings, wanted.step) != model_id:  # the base or suffix named is not the run's
        raise _not_found(model_id)
    target = _fine_tune(run, job, settings, model_id, wanted.step)
    if wanted.step is not None:
        if target.adapter_dir is None or not (target.adapter_dir / "adapter_config.json").is_file():
            raise _not_found(model_id)
        return target
    ready = _ready(session, run.id)
    if not RunStatus(run.status).finished or ArtifactKind.adapter not in ready:
        raise _not_found(model_id)
    if ArtifactKind.merged in ready and (merged := RunDir.of(run.id, settings).merged_dir).is_dir():
        # The merged model answers alone: the same weights as base + adapter, without the adapter's extra work.
        return replace(target, merged_dir=merged)
    return target


def _hub_bases(session: Session, settings: Settings) -> dict[str, int]:
    """Hub ids runs were started from, with when the first such run was created."""
    found: dict[str, int] = {}
    for run in session.scalars(select(Run).order_by(Run.created_at)):
        model = str(run.spec.get("base_model", ""))
        if model and base_id(model, settings) == model and "/" in model and not Path(model).is_absolute():
            found.setdefault(model, _unix(run.created_at))
    return found


def _base_created(base: str, session: Session) -> int:
    path = Path(base)
    if (path / "config.json").is_file():
        return int((path / "config.json").stat().st_mtime)
    first = session.scalar(select(Run.created_at).order_by(Run.created_at))
    return _unix(first)


def list_models(*, session: Session, settings: Settings) -> list[dict[str, Any]]:
    """Every model the API answers with: the bases, then the fine-tunes, newest first."""
    cards = [
        {"id": name, "object": "model", "created": int((path / "config.json").stat().st_mtime), "owned_by": BASE_OWNER}
        for name, path in local_bases(settings).items()
    ]
    known = {card["id"] for card in cards}
    cards += [
        {"id": hub, "object": "model", "created": created, "owned_by": BASE_OWNER}
        for hub, created in _hub_bases(session, settings).items()
        if hub not in known
    ]
    with_adapter = select(Artifact.run_id).where(
        Artifact.kind == ArtifactKind.adapter, Artifact.status == ArtifactStatus.ready
    )
    finished = [status.value for status in RunStatus if status.finished]
    tuned = session.scalars(
        select(Run).where(Run.id.in_(with_adapter), Run.status.in_(finished)).order_by(Run.created_at.desc())
    ).all()
    jobs = _runs_by_id(session, [run.id for run in tuned])
    for run in tuned:
        card = _fine_tune(run, jobs.get(run.id), settings, _fine_tune_id(run, jobs.get(run.id), settings), None).card()
        cards.append(card)
    return cards


def get_model(*, session: Session, settings: Settings, model_id: str) -> dict[str, Any]:
    return resolve_model(session=session, settings=settings, model_id=model_id).card()


def delete_model(*, session: Session, settings: Settings, model_id: str) -> dict[str, Any]:
    """Remove a fine-tune's adapter and merged model (files and artifact rows), so its id no longer answers.
    A base, or a checkpoint, is refused: a checkpoint goes with its run (delete the run in the dashboard)."""
    target = resolve_model(session=session, settings=settings, model_id=model_id)
    if target.run_id is None:
        raise Refused(f"model: `{model_id}` is a base model; only fine-tuned models (ft:...) can be deleted")
    if (wanted := parse_fine_tuned(model_id)) is not None and wanted.step is not None:
        raise Refused(f"model: `{model_id}` is a checkpoint; delete its fine-tuned model or its run instead")
    run_dir = RunDir.of(target.run_id, settings)
    for artifact in runs.list_artifacts(session=session, run_id=target.run_id):
        if artifact.kind in (ArtifactKind.adapter, ArtifactKind.merged):
            session.delete(artifact)
    session.commit()
    for folder in (run_dir.adapter_dir, run_dir.merged_dir):
        shutil.rmtree(folder, ignore_errors=True)
    return {"id": model_id, "object": "model", "deleted": True}
