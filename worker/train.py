"""One LoRA/QLoRA run, start to finish: claim, load, adapt, train, save, report.

`run_training(run_id)` is the whole story; the `_steps` below it each do one thing and can be
called on their own. Whatever happens, the run leaves `running`: a finished run is succeeded,
failed (with an error a user can act on) or cancelled.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainingArguments,
    set_seed,
)

from app import runs
from app.archive import describe_tree
from app.config import get_settings
from app.db import get_sessionmaker
from app.models import Artifact, ArtifactKind, ArtifactStatus, RunStatus
from app.schemas import RunSpec
from worker.callbacks import EventPublisher, MetricsCallback, run_log, tail_lines
from worker.data import PadCollator, TokenizedDataset, load_dataset

log = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A problem with the run's spec or inputs; the message is shown to the user as it is."""


def run_training(run_id: str) -> None:
    settings = get_settings()
    sessions = get_sessionmaker()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    with sessions() as session:
        if not runs.claim_run(session=session, run_id=run_id, worker=worker):
            log.info("run %s was not claimed (not queued, cancelled, or another worker owns it)", run_id)
            return
        raw_spec = runs.get_run(session=session, run_id=run_id).spec

    run_dir = settings.runs_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(json.dumps(raw_spec, indent=2, ensure_ascii=False), encoding="utf-8")
    publisher = EventPublisher(settings.redis_url, run_id, maxlen=settings.stream_maxlen)
    status, error = RunStatus.failed, "the run stopped without a result"
    with run_log(run_dir / "train.log"):
        try:
            log.info("run %s starts on %s", run_id, worker)
            publisher.publish("status", {"status": RunStatus.running.value})
            status = _train(run_id, raw_spec, run_dir, sessions, publisher)
            error = ""
        except Exception as exc:
            error = _plain_error(exc)
            log.exception("run %s failed: %s", run_id, error)
            publisher.publish("log", {"lines": tail_lines(run_dir / "train.log")})
        except BaseException:
            # The worker itself is going away (shutdown, kill): the run may resume elsewhere.
            status, error = RunStatus.interrupted, "the worker stopped before the run finished"
            raise
        finally:
            with sessions() as session:
                runs.finish_run(session=session, run_id=run_id, status=status, error=error or None)
            log.info("run %s %s", run_id, status.value)
            publisher.publish("status", {"status": status.value, "error": error or None})
            publisher.publish("done", {"status": status.value})
            publisher.close()
            _free_memory()


def _train(
    run_id: str,
    raw_spec: dict[str, Any],
    run_dir: Path,
    sessions: sessionmaker[Session],
    publisher: EventPublisher,
) -> RunStatus:
    spec = _read_spec(raw_spec)
    set_seed(spec.seed)  # before the adapter exists: its initial weights come from this seed
    tokenizer = _load_tokenizer(spec)
    train_data, eval_data = _load_dataset(spec, tokenizer)
    _check_target_modules(spec)
    model = _apply_adapter(_load_model(spec), spec)

    trainable, total = model.get_nb_trainable_parameters()
    with sessions() as session:
        runs.record_params(session=session, run_id=run_id, params_all=total, params_trainable=trainable)
    percent = 100.0 * trainable / total if total else 0.0
    publisher.publish("params", {"all": total, "trainable": trainable, "percent": percent})
    log.info("trainable params: %d || all params: %d || trainable%%: %.4f", trainable, total, percent)

    callback = MetricsCallback(run_id=run_id, sessions=sessions, publisher=publisher)
    trainer = _build_trainer(model, tokenizer, train_data, eval_data, spec, run_dir, callback)
    trainer.train()
    if callback.cancelled:
        return RunStatus.cancelled
    if eval_data is not None:
        trainer.evaluate()
        callback.flush()
    _save_adapter(model, run_id, run_dir, sessions, publisher)
    return RunStatus.succeeded


def _read_spec(raw_spec: dict[str, Any]) -> RunSpec:
    # Validated again because the files it names may have gone since the run was queued.
    try:
        return RunSpec.model_validate(raw_spec)
    except ValidationError as exc:
        messages = []
        for error in exc.errors():
            field, message = ".".join(map(str, error["loc"])), str(error["msg"]).removeprefix("Value error, ")
            messages.append(message if message.startswith(field) else f"{field}: {message}")
        raise RunError("; ".join(messages)) from None


def _device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _compute_dtype(name: str) -> torch.dtype:
    if name == "auto":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return getattr(torch, name)  # type: ignore[no-any-return]


def _load_tokenizer(spec: RunSpec) -> PreTrainedTokenizerBase:
    trust = get_settings().allow_trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(spec.base_model, trust_remote_code=trust)
    if tokenizer.pad_token_id is None:
        # Padding is masked out of the loss and attention, so any id will do; eos is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer  # type: ignore[no-any-return]


def _load_dataset(
    spec: RunSpec, tokenizer: PreTrainedTokenizerBase
) -> tuple[TokenizedDataset, TokenizedDataset | None]:
    train_data = load_dataset(spec.dataset, tokenizer, spec.max_seq_length)
    eval_data = load_dataset(spec.eval_dataset, tokenizer, spec.max_seq_length) if spec.eval_dataset else None
    log.info("dataset: %d train rows, %d eval rows", len(train_data), len(eval_data) if eval_data else 0)
    return train_data, eval_data


def _load_model(spec: RunSpec) -> PreTrainedModel:
    """The base model: NF4/FP4 4-bit for qlora, full precision for lora; on the GPU when there is one."""
    dtype = _compute_dtype(spec.bnb_4bit_compute_dtype if spec.method == "qlora" else "auto")
    kwargs: dict[str, Any] = {
        "device_map": {"": _device()},
        "dtype": dtype,
        "trust_remote_code": get_settings().allow_trust_remote_code,
        "use_safetensors": True,
    }
    if spec.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=spec.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=spec.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(spec.base_model, **kwargs)
    model.config.use_cache = False  # the KV cache only helps generation and costs memory in training
    return model  # type: ignore[no-any-return]


def adaptable_module_names(model: torch.nn.Module) -> list[str]:
    """Short names of the layers LoRA can adapt (linear, embedding, conv), e.g. q_proj, v_proj."""
    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if name and (isinstance(module, kinds) or type(module).__name__ == "Conv1D")
        }
    )


def _check_target_modules(spec: RunSpec) -> None:
    """Refuse unknown target_modules before any weight is read: the model's skeleton is enough to tell."""
    if spec.target_modules == ["all-linear"]:
        return
    trust = get_settings().allow_trust_remote_code
    config = AutoConfig.from_pretrained(spec.base_model, trust_remote_code=trust)
    try:
        with torch.device("meta"):  # no memory, no init: a 70B skeleton builds in a second
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust)
    except Exception as exc:  # some architectures cannot build on meta; get_peft_model checks again later
        log.info("target_modules not checked before loading (%s)", exc)
        return
    names = [name for name, _ in model.named_modules()]
    # PEFT matches a target against the end of each module's dotted name.
    missing = [t for t in spec.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise RunError(
            f"target_modules: {', '.join(missing)} not found in {type(model).__name__}; "
            f"its adaptable modules are: {', '.join(adaptable_module_names(model))} (or use all-linear)"
        )


def _apply_adapter(model: PreTrainedModel, spec: RunSpec) -> PeftModel:
    if spec.method == "qlora":
        # Freezes the 4-bit base and upcasts norms to fp32; checkpointing stays off because it trades
        # about a third more compute for activation memory, which small runs do not need.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules="all-linear" if spec.target_modules == ["all-linear"] else spec.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)  # type: ignore[return-value]


def _build_trainer(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    train_data: TokenizedDataset,
    eval_data: TokenizedDataset | None,
    spec: RunSpec,
    run_dir: Path,
    callback: MetricsCallback,
) -> Trainer:
    on_gpu = _device().startswith("cuda")
    compute_dtype = _compute_dtype(spec.bnb_4bit_compute_dtype if spec.method == "qlora" else "auto")
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        max_steps=spec.max_steps,
        learning_rate=spec.learning_rate,
        per_device_train_batch_size=spec.per_device_train_batch_size,
        per_device_eval_batch_size=spec.per_device_train_batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        warmup_steps=math.ceil(spec.max_steps * spec.warmup_ratio),
        lr_scheduler_type=spec.lr_scheduler_type,
        logging_steps=spec.logging_steps,
        seed=spec.seed,
        bf16=on_gpu and compute_dtype == torch.bfloat16,
        fp16=on_gpu and compute_dtype == torch.float16,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=PadCollator(pad_token_id=int(tokenizer.pad_token_id)),  # type: ignore[arg-type]
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log to stdout; ours go to train.log and Redis
    return trainer


def _save_adapter(
    model: PeftModel, run_id: str, run_dir: Path, sessions: sessionmaker[Session], publisher: EventPublisher
) -> None:
    """Save in PEFT's own format (adapter_config.json + adapter_model.safetensors) and record the artifact."""
    adapter_dir = run_dir / "adapter"
    shutil.rmtree(adapter_dir, ignore_errors=True)  # a resumed run must not mix files of two attempts
    model.save_pretrained(str(adapter_dir), safe_serialization=True)
    tree = describe_tree(adapter_dir, prefix=f"{run_id}-adapter")
    with sessions() as session:
        artifact = Artifact(
            run_id=run_id,
            kind=ArtifactKind.adapter,
            status=ArtifactStatus.ready,
            path=f"{run_id}/adapter",
            size_bytes=tree["archive_size"],
            sha256=tree["archive_sha256"],
            files=tree["files"],
            details={"format": "peft"},
        )
        session.add(artifact)
        session.commit()
        payload = {
            "id": artifact.id,
            "kind": artifact.kind,
            "status": artifact.status,
            "size_bytes": artifact.size_bytes,
            "sha256": artifact.sha256,
        }
    log.info("adapter saved to %s (%d bytes as an archive)", adapter_dir, tree["archive_size"])
    publisher.publish("artifact", payload)


def _plain_error(exc: BaseException) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return (
            "out of GPU memory: lower per_device_train_batch_size or max_seq_length "
            "(raise gradient_accumulation_steps to keep the effective batch), or use method qlora"
        )
    if isinstance(exc, RunError | ValueError | OSError) and str(exc):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
