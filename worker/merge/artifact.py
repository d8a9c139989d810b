"""Merge a run's adapter into its base model, prove the merge is faithful, and offer it for download.

The merge itself streams (`worker.merge.streaming`): tensor by tensor onto the full-precision base
(never the 4-bit copy QLoRA trained on: merging into quantized weights would round the update away),
in memory bounded by the largest tensor. Then the proof, before the artifact turns ready: a few prompts
of the run's own data go through the merged model, loaded from its folder by stock transformers, and
through the adapter on its base. Their logits must agree (it is the same function), within what rounding
to the output dtype explains relative to each position's logits, and differ from the bare base's (else the
adapter changed nothing). Only then are the model card and SHA256SUMS written and
the folder moved to `merged`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app import runs
from app.archive import archive_name, describe_tree
from app.config import get_settings
from app.contracts.events import ArtifactEvent, artifact_event
from app.db import get_sessionmaker
from app.errors import InvalidInput
from app.models import Artifact, ArtifactKind, ArtifactStatus, Metric
from app.preflight import check_inputs, stored_spec
from app.rundir import RunDir
from worker.data.hub import model_source
from worker.engine.configs import vllm_lora_incompatibility
from worker.merge.check import (
    CHANGED_THRESHOLD,
    REL_TOLERANCES,
    ArtifactError,
    MergeError,
    check_merge,
    check_prompts,
)
from worker.merge.model_card import render_model_card, write_sha256sums
from worker.merge.streaming import merge_adapter_streaming
from worker.runtime.publisher import EventPublisher

log = logging.getLogger(__name__)


@dataclass
class ArtifactJob:
    """An artifact this worker claimed (pending -> running), with what its work needs to know of the run."""

    artifact_id: str
    kind: str
    details: dict[str, Any]
    run_id: str
    spec: dict[str, Any]
    run_dir: RunDir
    training: dict[str, Any]  # steps and last losses, for the model card


def claim_artifact(artifact_id: str) -> ArtifactJob | None:
    """Take a pending artifact with one conditional UPDATE, like claim_run: a re-delivered task finds it taken.
    The claim names this worker (its node name and start time), so a reaper can fail the artifact should this
    worker go away while it is being made (worker.runtime.reaper)."""
    from worker.runtime.celery_app import worker_record

    me = worker_record()
    with get_sessionmaker()() as session:
        held = dict(runs.get_artifact(session=session, artifact_id=artifact_id).details or {})
        if me.name:
            held["made_by"] = {"worker": me.name, "started": me.started}
        claimed = session.execute(
            update(Artifact)
            .where(Artifact.id == artifact_id, Artifact.status == ArtifactStatus.pending)
            .values(status=ArtifactStatus.running, error=None, details=held)
        )
        session.commit()
        artifact = runs.get_artifact(session=session, artifact_id=artifact_id)
        if not claimed.rowcount:  # type: ignore[attr-defined]
            log.info("%s artifact %s is %s, not pending; nothing to do", artifact.kind, artifact_id, artifact.status)
            return None
        run = runs.get_run(session=session, run_id=artifact.run_id)
        training = {
            "steps": run.step,
            "train_loss": _last_loss(session, run.id, "train"),
            "eval_loss": _last_loss(session, run.id, "eval"),
        }
        return ArtifactJob(
            artifact_id=artifact_id,
            kind=artifact.kind,
            details=dict(artifact.details or {}),
            run_id=run.id,
            spec=dict(run.spec),
            run_dir=RunDir.of(run.id),
            training=training,
        )


def run_artifact_job(job: ArtifactJob, work: Callable[[ArtifactJob, EventPublisher], dict[str, Any]]) -> None:
    """Do an artifact's work and record how it ended: ready with what `work` returns (path, size, sha256,
    files, details), or failed with a message a user can act on (and the figures it was judged by)."""
    settings = get_settings()
    publisher = EventPublisher(settings.redis_url, job.run_id, maxlen=settings.stream_maxlen)
    publisher.publish(ArtifactEvent(id=job.artifact_id, kind=job.kind, status=ArtifactStatus.running))
    values: dict[str, Any]
    try:
        values = work(job, publisher) | {"status": ArtifactStatus.ready}
    except Exception as exc:
        log.exception("%s of run %s failed", job.kind, job.run_id)
        plain = isinstance(exc, ArtifactError | InvalidInput | OSError | ValueError)  # UnmergeableAdapter: ValueError
        error = str(exc) if plain else f"{type(exc).__name__}: {exc}"
        values = {"status": ArtifactStatus.failed, "error": error}
        if isinstance(exc, ArtifactError) and exc.details:
            values["details"] = job.details | exc.details
    finally:
        gc.collect()
    with get_sessionmaker()() as session:
        session.execute(update(Artifact).where(Artifact.id == job.artifact_id).values(**values))
        session.commit()
        artifact = runs.get_artifact(session=session, artifact_id=job.artifact_id)
        event = artifact_event(artifact)
    publisher.publish(event)
    publisher.close()


def merge_artifact(artifact_id: str) -> None:
    """The merge queue's task: merge, check and offer the run's merged model."""
    job = claim_artifact(artifact_id)
    if job is not None:
        run_artifact_job(job, merge_run)


def merge_run(job: ArtifactJob, _: EventPublisher) -> dict[str, Any]:
    """The merged folder, checked; a half-written one is never left behind."""
    settings = get_settings()
    dtype = str(job.details.get("dtype", "auto"))
    try:
        return _merge(job.run_id, job.spec, dtype, job.run_dir, settings.allow_trust_remote_code, job.training)
    except BaseException:
        shutil.rmtree(job.run_dir.merged_partial_dir, ignore_errors=True)
        raise


def _merge(
    run_id: str, spec: dict[str, Any], dtype: str, run_dir: RunDir, trust: bool, training: dict[str, Any]
) -> dict[str, Any]:
    started = time.perf_counter()
    adapter_dir = run_dir.adapter_dir
    if not (adapter_dir / "adapter_config.json").is_file():
        raise MergeError(f"run {run_id} has no saved adapter at {adapter_dir}; train it to success first")
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    # The base and the dataset (the check's prompts) are read again: still there, under the allowed roots.
    checked = check_inputs(stored_spec(spec), get_settings(), fields=("base_model", "dataset"))
    base_dir = Path(model_source(checked.base_model))
    prompts = check_prompts(checked.dataset)

    partial = run_dir.merged_partial_dir  # a crash mid-save must never leave a half model under `merged`
    shutil.rmtree(partial, ignore_errors=True)
    _reset_peak_rss()
    summary = merge_adapter_streaming(base_dir, adapter_dir, partial, dtype=dtype)
    peak_rss = _peak_rss()
    check = check_merge(base_dir, adapter_dir, partial, prompts, trust=trust)
    tolerance = REL_TOLERANCES[summary["dtype"]]
    log.info("merge check in %s (max_rel_diff allowed: %.3g): %s", summary["dtype"], tolerance, check)
    figures = {**check, "rel_tolerance": tolerance, "dtype": summary["dtype"], "prompts": prompts}
    if not check["max_rel_diff"] <= tolerance:
        raise MergeError(
            f"the merged model's logits differ from adapter-on-base by {check['max_rel_diff']:.3g} of their "
            f"spread (largest difference {check['max_abs_diff']:.3g}; top-1 agreement "
            f"{100 * check['top1_agreement']:.1f}%, largest KL divergence {check['max_kl']:.3g}), more than "
            f"rounding to {summary['dtype']} explains (allowed: {tolerance:.3g}); the merge is not faithful",
            figures,
        )
    if not check["base_diff"] > CHANGED_THRESHOLD:
        raise MergeError(
            f"the merged model gives the same logits as the base (difference {check['base_diff']:.3g}): "
            "the adapter changes nothing, so there is nothing to merge",
            figures,
        )

    vllm_reason = vllm_lora_incompatibility(adapter_config)
    details = {
        **figures,
        "shards": summary["shards"],
        "merged_tensors": summary["merged_tensors"],
        "untied_embeddings": summary["untied_embeddings"],
        "merge_seconds": summary["seconds"],
        "peak_rss_bytes": peak_rss,
        "vllm_lora_compatible": vllm_reason is None,
        **({"vllm_reason": vllm_reason} if vllm_reason else {}),
    }
    card = render_model_card(spec=spec, adapter_config=adapter_config, check=details, **training)
    (partial / "README.md").write_text(card, encoding="utf-8")
    write_sha256sums(partial, known=summary["sha256"])  # last: it covers every other file
    target = run_dir.merged_dir
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    tree = describe_tree(target, prefix=archive_name(run_id, ArtifactKind.merged))
    details["seconds"] = round(time.perf_counter() - started, 3)
    return {
        "path": run_dir.relative(target),
        "size_bytes": tree["archive_size"],
        "sha256": tree["archive_sha256"],
        "files": tree["files"],
        "details": details,
    }


def _last_loss(session: Session, run_id: str, kind: str) -> float | None:
    # One indexed row, not the run's whole history (which may hold a million points).
    query = (
        select(Metric.loss)
        .where(Metric.run_id == run_id, Metric.kind == kind, Metric.loss.is_not(None))
        .order_by(Metric.step.desc(), Metric.id.desc())
        .limit(1)
    )
    return session.scalar(query)


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets this process's peak RSS (VmHWM), so the figure is the merge's
    # own and not that of a training run the same worker process did before.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss() -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    line = next((line for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return int(line.split()[1]) * 1024 if line else None
