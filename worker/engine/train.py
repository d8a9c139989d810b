"""One PEFT run, start to finish: claim, load, adapt, train (or resume), save, report.

`run_training(run_id)` is the whole story; the `_steps` below it each do one thing and can be
called on their own. The spec -> config mapping lives in `worker.engine.configs`. Whatever happens, the run
leaves `running`: a finished run is succeeded, failed (with an error a user can act on,
worker/engine/failures.py) or cancelled; a run whose worker stops is interrupted and goes back to the queue,
and one whose worker is lost is interrupted by a reaper when its lease expires (worker/runtime/lease.py,
worker/runtime/reaper.py). Either way it resumes from its last checkpoint when claimed again.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from app import runs
from app.archive import describe_tree
from app.config import get_settings
from app.db import get_sessionmaker
from app.models import Artifact, ArtifactKind, ArtifactStatus, RunStatus
from app.queue import enqueue_train
from app.schemas import RunSpec
from worker.data.encode import eval_rows, load_training_data, make_collator
from worker.engine.callbacks import EventPublisher, EventSink, MetricsCallback, run_log, tail_lines
from worker.engine.configs import (
    RunError,
    check_module_names,
    model_dtype,
    peft_config,
    quantization_config,
    read_spec,
    training_arguments,
    training_callbacks,
)
from worker.engine.evaluate import evaluate_run, shipped_model
from worker.engine.failures import check_base_model, explain, explained, model_not_found
from worker.runtime.lease import HANDED_BACK, Lease, heartbeat_every, resume_point

log = logging.getLogger(__name__)

__all__ = ["RunError", "run_training"]


def run_training(run_id: str, *, on_event: EventSink | None = None) -> None:
    """Train the run to its end; `on_event` also receives each event published (the CLI prints them)."""
    settings = get_settings()
    sessions = get_sessionmaker()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    with sessions() as session:
        # The claim decides: a duplicated message, or a second worker racing for the run, ends here.
        if not runs.claim_run(session=session, run_id=run_id, worker=worker):
            log.info("run %s was not claimed (not queued, cancelled, or another worker owns it)", run_id)
            return
        raw_spec = runs.get_run(session=session, run_id=run_id).spec

    run_dir = settings.runs_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    publisher = EventPublisher(settings.redis_url, run_id, maxlen=settings.stream_maxlen, echo=on_event)
    lease = Lease(run_id=run_id, worker=worker, sessions=sessions, every_s=heartbeat_every(settings.lease_timeout_s))
    status, error = RunStatus.failed, "the run stopped without a result"
    with lease, run_log(run_dir / "train.log"):
        try:
            log.info("run %s starts on %s", run_id, worker)
            publisher.publish("status", {"status": RunStatus.running.value})
            (run_dir / "spec.json").write_text(json.dumps(raw_spec, indent=2, ensure_ascii=False), encoding="utf-8")
            status = _train(run_id, raw_spec, run_dir, sessions, publisher, lease)
            error = HANDED_BACK if status == RunStatus.interrupted else ""
        except Exception as exc:
            error = explain(exc, raw_spec, run_dir)
            log.error("run %s failed: %s", run_id, error, exc_info=not explained(exc, run_dir))  # tracebacks: bugs only
            publisher.publish("log", {"lines": tail_lines(run_dir / "train.log")})
        except BaseException:
            # The process itself is going away (shutdown, Ctrl-C): the run resumes from its last checkpoint.
            status, error = RunStatus.interrupted, "the worker stopped before the run finished"
            raise
        finally:
            lease.stop()
            _finish(run_id, worker, status, error, publisher, lease.lost)


def _finish(run_id: str, worker: str, status: RunStatus, error: str, publisher: EventPublisher, lost: bool) -> None:
    """Record the end, unless the run was taken away from this worker: then its new owner reports it."""
    with get_sessionmaker()() as session:
        recorded = not lost and runs.finish_run(
            session=session, run_id=run_id, status=status, error=error or None, worker=worker
        )
    if recorded and error == HANDED_BACK:
        log.info("run %s: %s", run_id, error)
        publisher.publish("status", {"status": status.value, "error": error})
        with contextlib.suppress(Exception):  # Redis down: a reaper enqueues it later (worker/runtime/reaper.py)
            enqueue_train(run_id)
    elif recorded:
        log.info("run %s %s", run_id, status.value)
        publisher.publish("status", {"status": status.value, "error": error or None})
        publisher.publish("done", {"status": status.value})
    else:
        log.warning("run %s: stopped here; another worker took it over after this one's lease expired", run_id)
    publisher.close()
    _free_memory()


def _train(
    run_id: str,
    raw_spec: dict[str, Any],
    run_dir: Path,
    sessions: sessionmaker[Session],
    publisher: EventPublisher,
    lease: Lease,
) -> RunStatus:
    check_base_model(raw_spec)  # a deleted model directory says so, before the spec check calls it "no hub id"
    spec = read_spec(raw_spec)
    if spec.gpus > 1:
        from worker.engine.distributed import train_distributed  # it builds on this module's steps

        return train_distributed(
            spec, run_id=run_id, run_dir=run_dir, sessions=sessions, publisher=publisher, lease=lease
        )
    setup = prepare_training(spec, run_dir)
    report_params(setup.model, run_id, sessions, publisher)
    checkpoint = resume_point(run_id, run_dir / "checkpoints", sessions, publisher)
    callback = MetricsCallback(run_id=run_id, sessions=sessions, publisher=publisher, lease=lease)
    trainer = build_trainer(setup, spec, callback)
    fit(trainer, checkpoint, callback)
    if lease.lost or callback.handed_back:  # another worker owns it now, or takes it from the queue
        return RunStatus.interrupted
    if callback.cancelled:
        return RunStatus.cancelled
    details = final_evaluation(trainer, setup, spec, callback, publisher)
    if callback.stopped:
        details["stopped_at_step"] = trainer.state.global_step
    save_results(setup, spec, run_id, run_dir, sessions, publisher, details)
    return RunStatus.stopped if callback.stopped else RunStatus.succeeded


@dataclass
class TrainingSetup:
    """What a training process builds from the spec before Trainer: arguments, tokenizer, data, adapted model."""

    args: TrainingArguments
    tokenizer: PreTrainedTokenizerBase
    train_data: Any
    eval_data: Any | None
    model: PeftModel


def prepare_training(spec: RunSpec, run_dir: Path) -> TrainingSetup:
    """Everything up to Trainer; each process of a multi-GPU run builds its own copy."""
    args = training_arguments(spec, run_dir)  # first: it refuses a precision the device lacks, before any load
    # Trainer's default averages a NaN loss away in the logs (a diverged run would log 0.0 and go on).
    args.logging_nan_inf_filter = False
    set_seed(spec.seed)  # before the adapter exists: its initial weights come from this seed
    tokenizer = _load_tokenizer(spec)
    train_data, eval_data = load_training_data(spec, tokenizer)
    check_module_names(spec)
    model = _apply_adapter(_load_model(spec), spec)
    return TrainingSetup(args, tokenizer, train_data, eval_data, model)


def report_params(model: PeftModel, run_id: str, sessions: sessionmaker[Session], publisher: EventPublisher) -> None:
    trainable, total = model.get_nb_trainable_parameters()
    with sessions() as session:
        runs.record_params(session=session, run_id=run_id, params_all=total, params_trainable=trainable)
    percent = 100.0 * trainable / total if total else 0.0
    publisher.publish("params", {"all": total, "trainable": trainable, "percent": percent})
    log.info("trainable params: %d || all params: %d || trainable%%: %.4f", trainable, total, percent)


def fit(trainer: Trainer, checkpoint: Path | None, callback: MetricsCallback | None) -> None:
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        if callback is not None:
            callback.flush()  # the points before a failure are in the database too


def final_evaluation(
    trainer: Trainer,
    setup: TrainingSetup,
    spec: RunSpec,
    callback: MetricsCallback | None,
    publisher: EventPublisher | None,
) -> dict[str, Any]:
    """The adapter artifact's details; evaluates once more when the last step had no evaluation of its own.
    Every process of a multi-GPU run calls it (evaluation is a collective); only the first one reports."""
    details: dict[str, Any] = {"format": "peft", "method": spec.method}
    if setup.args.load_best_model_at_end:
        if publisher is not None:
            details |= _best_checkpoint(trainer, publisher)
    elif setup.eval_data is not None and (not spec.eval_steps or trainer.state.global_step % spec.eval_steps):
        trainer.evaluate()
        if callback is not None:
            callback.flush()
    return details


def save_results(
    setup: TrainingSetup,
    spec: RunSpec,
    run_id: str,
    run_dir: Path,
    sessions: sessionmaker[Session],
    publisher: EventPublisher,
    details: dict[str, Any],
) -> None:
    """The adapter and its artifact row, then base beside adapter on the eval rows and regression prompts."""
    _save_adapter(setup.model, run_id, run_dir, sessions, publisher, details)
    _evaluate(setup.model, setup.tokenizer, spec, run_id, run_dir, sessions, publisher)


def _evaluate(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: RunSpec,
    run_id: str,
    run_dir: Path,
    sessions: sessionmaker[Session],
    publisher: EventPublisher,
) -> None:
    """Base beside adapter on the eval rows and the regression prompts, on the base the run ships against
    (`shipped_model`: for QLoRA the full-precision one). A failure here costs the run nothing: the adapter
    is saved; the evaluation says what went wrong instead."""
    if not spec.task_eval_rows and not spec.regression_prompts:
        return
    model.config.use_cache = True  # off for training; generation wants it

    def progress(done: int, total: int) -> None:
        # The run page and the runs list say "evaluating done/total rows" while base and adapter answer.
        state = {"progress": {"done": done, "total": total}}
        with sessions() as session:
            runs.record_evaluation(session=session, run_id=run_id, evaluation=state)
        publisher.publish("evaluating", state["progress"])

    try:
        shipped, base = shipped_model(model, spec, run_dir / "adapter")
        evaluation = {"base": base} | evaluate_run(shipped, tokenizer, spec, eval_rows(spec), on_progress=progress)
        del shipped
        gc.collect()
    except Exception as exc:
        log.warning("evaluation after training failed: %s", exc, exc_info=True)
        evaluation = {"error": f"{type(exc).__name__}: {exc}"}
    for side in ("base", "adapter"):
        if task := evaluation.get("task", {}).get(side):
            fields = task["field_accuracy"]
            log.info(
                "task metrics, %s: exact match %.1f%% of %d rows%s",
                side,
                100 * task["exact_match"],
                task["rows"],
                "" if fields is None else f", JSON fields right {100 * fields:.1f}%",
            )
    with sessions() as session:
        runs.record_evaluation(session=session, run_id=run_id, evaluation=evaluation)
    publisher.publish(
        "evaluation",
        {key: evaluation[key] for key in ("base", "task", "task_skipped", "error") if key in evaluation},
    )


def _best_checkpoint(trainer: Trainer, publisher: EventPublisher) -> dict[str, Any]:
    """Which checkpoint Trainer loaded back as the result (early stopping keeps the best eval loss)."""
    best = trainer.state.best_model_checkpoint
    if best is None:
        return {}
    step = int(Path(best).name.rsplit("-", 1)[-1])
    # state.best_metric may belong to an evaluation without a checkpoint; the log has the loaded one's.
    losses = [e["eval_loss"] for e in trainer.state.log_history if e.get("step") == step and "eval_loss" in e]
    loss = float(losses[-1]) if losses else trainer.state.best_metric
    stopped = trainer.state.global_step
    line = f"kept the checkpoint of step {step} (eval loss {loss:.4f}) as the result; training ended at step {stopped}"
    log.info(line)
    publisher.publish("log", {"lines": [line]})
    return {"best_step": step, "best_eval_loss": loss, "stopped_at_step": stopped}


def _device() -> str:
    # LOCAL_RANK: this process's GPU in a multi-GPU run (worker/engine/distributed.py); unset, the first one.
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def _load_tokenizer(spec: RunSpec) -> PreTrainedTokenizerBase:
    trust = get_settings().allow_trust_remote_code
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.base_model, trust_remote_code=trust)
    except OSError as exc:  # the first read of base_model: a hub id that does not resolve fails here
        raise model_not_found(spec.base_model, exc) from exc
    if tokenizer.pad_token_id is None:
        # Padding is masked out of the loss and attention, so any id will do; eos is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer  # type: ignore[no-any-return]


def _load_model(spec: RunSpec) -> PreTrainedModel:
    """The frozen base: 4-bit or 8-bit through bitsandbytes, or full precision; on the GPU when there is one."""
    model = AutoModelForCausalLM.from_pretrained(
        spec.base_model,
        device_map={"": _device()},
        dtype=model_dtype(spec),
        quantization_config=quantization_config(spec),
        trust_remote_code=get_settings().allow_trust_remote_code,
        use_safetensors=True,
    )
    model.config.use_cache = False  # the KV cache only helps generation and costs memory in training
    return model  # type: ignore[no-any-return]


def _apply_adapter(model: PreTrainedModel, spec: RunSpec) -> PeftModel:
    if getattr(model, "is_quantized", False):
        # Freezes the quantized base and upcasts norms to fp32 for stable training.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=spec.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    peft_model: PeftModel = get_peft_model(model, peft_config(spec, model_type=model.config.model_type))  # type: ignore[assignment]
    for parameter in peft_model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            # Trained weights stay fp32 (a copied lm_head would be bf16/fp16 on a half-precision base): the
            # fp16 grad scaler refuses half-precision grads, and small updates vanish in bf16.
            parameter.data = parameter.data.float()
    return peft_model


def _build_trainer(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    train_data: Any,
    eval_data: Any | None,
    spec: RunSpec,
    args: TrainingArguments,
    *callbacks: TrainerCallback,
) -> Trainer:
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=make_collator(spec, tokenizer),
        processing_class=tokenizer,
        callbacks=[*callbacks, *training_callbacks(spec)],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log to stdout; ours go to train.log and Redis
    return trainer


def build_trainer(setup: TrainingSetup, spec: RunSpec, *callbacks: TrainerCallback) -> Trainer:
    return _build_trainer(setup.model, setup.tokenizer, setup.train_data, setup.eval_data, spec, setup.args, *callbacks)


def _save_adapter(
    model: PeftModel,
    run_id: str,
    run_dir: Path,
    sessions: sessionmaker[Session],
    publisher: EventPublisher,
    details: dict[str, Any],
) -> None:
    """Save in PEFT's own format (adapter_config.json + adapter_model.safetensors) and record the artifact."""
    adapter_dir = run_dir / "adapter"
    shutil.rmtree(adapter_dir, ignore_errors=True)  # a resumed run must not mix files of two attempts
    model.save_pretrained(str(adapter_dir), safe_serialization=True)
    tree = describe_tree(adapter_dir, prefix=f"{run_id}-adapter")
    with sessions() as session:
        # An attempt killed between saving and finishing left its row; this adapter replaces that one.
        session.execute(delete(Artifact).where(Artifact.run_id == run_id, Artifact.kind == ArtifactKind.adapter))
        artifact = Artifact(
            run_id=run_id,
            kind=ArtifactKind.adapter,
            status=ArtifactStatus.ready,
            path=f"{run_id}/adapter",
            size_bytes=tree["archive_size"],
            sha256=tree["archive_sha256"],
            files=tree["files"],
            details=details,
        )
        session.add(artifact)
        session.commit()
        payload = {
            "id": artifact.id,
            "kind": artifact.kind,
            "status": artifact.status,
            "size_bytes": artifact.size_bytes,
            "sha256": artifact.sha256,
            "details": details,
        }
    log.info("adapter saved to %s (%d bytes as an archive)", adapter_dir, tree["archive_size"])
    publisher.publish("artifact", payload)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
