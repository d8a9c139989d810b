"""The export task: a run's merged model as one .gguf for llama.cpp and Ollama, with a Modelfile beside it,
checked by llama.cpp against transformers before it is offered.

Runs on the merge queue. It merges first when the run has no merged model yet (or waits for a merge another
worker is doing), converts tensor by tensor (worker.export.gguf_convert, memory-mapped), checks the file on
the run's own prompts (worker.export.gguf_check) and writes the Modelfile (worker.export.modelfile). Progress
goes to the artifact row and the run's live stream; a file that fails its check is never offered, and the
artifact says by how much it failed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from app import runs
from app.archive import archive_name, describe_tree
from app.config import get_settings
from app.contracts.artifacts import ExportDetails, GgufCheck, GgufConversion
from app.contracts.artifacts import Progress as ExportProgress
from app.contracts.events import ArtifactEvent
from app.contracts.playground import PlaygroundRequest
from app.dataset_shapes import trains_with_chat
from app.db import get_sessionmaker
from app.models import Artifact, ArtifactKind, ArtifactStatus
from app.preflight import check_inputs, stored_spec
from app.schemas import RunSpec
from worker.export.gguf_check import check_gguf
from worker.export.gguf_convert import convert_to_gguf
from worker.export.modelfile import identify_chat_format, modelfile_text, validate_modelfile
from worker.merge.artifact import ArtifactJob, claim_artifact, merge_artifact, run_artifact_job
from worker.merge.check import ArtifactError, check_prompts
from worker.merge.model_card import write_sha256sums
from worker.runtime.publisher import EventPublisher

log = logging.getLogger(__name__)

CHECK_PROMPTS = 8  # rows of the run's own data the file is checked on
PROGRESS_EVERY_S = 1.0  # progress written and announced at most this often
MERGE_WAIT_S = 6 * 3600  # a merge another worker is doing: how long the export waits for it
# What the playground answers with by default: the Modelfile's sampling, so `ollama run` answers alike.
PLAYGROUND = PlaygroundRequest(run_id="0", prompt="x")


class ExportError(ArtifactError):
    """The export cannot be offered; says why, with the figures it was judged by."""


def export_artifact(artifact_id: str) -> None:
    """The merge queue's export task: convert, check and offer one GGUF of the run's merged model."""
    job = claim_artifact(artifact_id)
    if job is not None:
        run_artifact_job(job, export_gguf)


class Progress:
    """Where the export is (stage, done of total), on the artifact row and in the run's stream, at most once a
    second; the page's artifacts panel shows it."""

    def __init__(self, job: ArtifactJob, publisher: EventPublisher) -> None:
        self.job, self.publisher, self.last = job, publisher, 0.0

    def __call__(self, stage: str, done: int = 0, total: int = 0, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        details = self.job.details | {"progress": ExportProgress(stage=stage, done=done, total=total).model_dump()}
        with get_sessionmaker()() as session:
            session.execute(update(Artifact).where(Artifact.id == self.job.artifact_id).values(details=details))
            session.commit()
        event = ArtifactEvent(id=self.job.artifact_id, kind=self.job.kind, status="running", details=details)
        self.publisher.publish(event)


def export_gguf(job: ArtifactJob, publisher: EventPublisher) -> dict[str, Any]:
    gguf_type = str(job.details["type"])
    progress = Progress(job, publisher)
    # What it reads (the base for the tokenizer's files, the dataset for the check's prompts) under the roots.
    spec = check_inputs(stored_spec(job.spec), get_settings(), fields=("base_model", "dataset"))
    merged = ensure_merged(job, progress)
    final = job.run_dir.export_dir(gguf_type)
    partial = final.with_name(final.name + ".partial")  # a crash mid-export never leaves a half folder
    shutil.rmtree(partial, ignore_errors=True)
    try:
        return _export(job, spec, gguf_type, merged, partial, final, progress)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _export(
    job: ArtifactJob, spec: RunSpec, gguf_type: str, merged: Path, partial: Path, final: Path, progress: Progress
) -> dict[str, Any]:
    started = time.perf_counter()
    name = f"{job.run_id}-{gguf_type}.gguf"
    chat_format, jinja = chat_format_of(spec, merged)
    progress("converting", force=True)
    converted = convert_to_gguf(
        merged,
        partial / name,
        gguf_type,
        progress=lambda done, total: progress("converting", done, total),
        chat_template=jinja,
    )
    progress("checking", force=True)
    prompts = check_prompts(spec.dataset, limit=CHECK_PROMPTS)
    check = check_gguf(partial / name, merged, prompts, gguf_type)
    # Typed on the way out (app.contracts.artifacts): what the artifacts panel reads.
    typed = ExportDetails(
        type=gguf_type, check=GgufCheck.model_validate(check), conversion=GgufConversion.model_validate(converted)
    )
    figures: dict[str, Any] = typed.model_dump(mode="json", exclude_none=True)
    if not check["passed"]:
        raise ExportError(_refusal(check), figures)
    tokenizer = json.loads((merged / "tokenizer_config.json").read_text(encoding="utf-8"))
    eos, bos = _token(tokenizer.get("eos_token")), _token(tokenizer.get("bos_token"))
    modelfile = modelfile_text(
        name,
        chat_format,
        stop_tokens=[eos] if eos else [],
        parameters={
            "temperature": PLAYGROUND.temperature,
            "top_p": PLAYGROUND.top_p,
            "max_new_tokens": spec.eval_max_new_tokens,
            "seed": PLAYGROUND.seed,
        },
        bos_token=None if converted.get("add_bos_token") else bos,
        eos_token=eos,
    )
    validate_modelfile(modelfile, [name])
    (partial / "Modelfile").write_text(modelfile, encoding="utf-8")
    write_sha256sums(partial)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    tree = describe_tree(final, prefix=archive_name(job.run_id, job.kind, job.details))
    figures |= {"file": name, "chat_format": chat_format, "seconds": round(time.perf_counter() - started, 3)}
    return {
        "path": job.run_dir.relative(final),
        "size_bytes": tree["archive_size"],
        "sha256": tree["archive_sha256"],
        "files": tree["files"],
        "details": job.details | figures,
    }


def _refusal(check: dict[str, Any]) -> str:
    """Why a file that failed its check is not offered, with the figures."""
    parts = []
    if not check["tokens_same"]:
        differing = sum(not entry["same"] for entry in check["tokens"])
        parts.append(f"its tokenizer splits {differing} of {check['prompts']} prompts otherwise than the model's")
    if "tolerance" in check and check["max_rel_logit_diff"] > check["tolerance"]:
        parts.append(
            f"its logits differ from transformers' by {check['max_rel_logit_diff']:.3g} of their spread "
            f"(allowed in {check['gguf_type']}: {check['tolerance']}; largest difference "
            f"{check['max_abs_logit_diff']:.3g})"
        )
    if "threshold" in check and check["greedy_agreement"] < check["threshold"]:
        parts.append(
            f"llama.cpp picks transformers' greedy token at {100 * check['greedy_agreement']:.1f}% of the clear "
            f"steps (needed: {100 * check['threshold']:.0f}%); {check['gguf_type']} keeps too little of this model"
        )
    return "the exported file failed its check, so it is not offered: " + "; ".join(parts or ["see the figures"])


def _token(value: Any) -> str:
    """A special token's text from tokenizer_config.json (a string, or an AddedToken's dict)."""
    if isinstance(value, dict):
        return str(value.get("content") or "")
    return str(value or "")


def chat_format_of(spec: RunSpec, merged: Path) -> tuple[str, str | None]:
    """How the exported model is prompted, as the run trained: (Ollama format, Jinja template to embed, or None
    to keep the tokenizer's own). Prompt/completion and text rows were trained on as they are: the prompt as it
    is. Messages rows through the template training resolved (worker.data.chat: `auto` is the tokenizer's own,
    or chatml for a tokenizer without one)."""
    if not trains_with_chat(spec.dataset):
        return "completion", None
    from transformers import AutoTokenizer

    from worker.data.chat import NAMED_TEMPLATES, chat_template_name

    tokenizer = AutoTokenizer.from_pretrained(merged)
    name = chat_template_name(tokenizer, spec.chat_template)
    if name != "tokenizer":
        return name, NAMED_TEMPLATES[name]
    return identify_chat_format(
        lambda messages: str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)),
        bos_token=str(tokenizer.bos_token or ""),
        eos_token=str(tokenizer.eos_token or ""),
    ), None


def ensure_merged(job: ArtifactJob, progress: Progress) -> Path:
    """The run's checked merged model: the one ready, or merged here (a pending merge is taken and run), or
    the one another worker is merging, once it is ready."""
    deadline, merged_here = time.monotonic() + MERGE_WAIT_S, False
    while True:
        with get_sessionmaker()() as session:
            newest = session.scalar(
                select(Artifact)
                .where(Artifact.run_id == job.run_id, Artifact.kind == ArtifactKind.merged)
                .order_by(Artifact.created_at.desc(), Artifact.id.desc())
            )
            if newest is None or (newest.status == ArtifactStatus.failed and not merged_here):
                newest, _ = runs.request_merge(session=session, run_id=job.run_id, dtype="auto")
            status, merged_id, error = newest.status, newest.id, newest.error
        if status == ArtifactStatus.ready and job.run_dir.merged_dir.is_dir():
            return job.run_dir.merged_dir
        if status == ArtifactStatus.failed or time.monotonic() > deadline:
            raise ExportError(f"the merged model this export needs is not there: {error or 'the merge did not end'}")
        if status == ArtifactStatus.pending:
            progress("merging", force=True)
            log.info("export of run %s: merging first (artifact %s)", job.run_id, merged_id)
            merge_artifact(merged_id)  # claims it; if another worker claimed it first, it is waited for below
            merged_here = True
            continue
        progress("waiting for the merge")
        time.sleep(2.0)
