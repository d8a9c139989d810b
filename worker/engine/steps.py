"""The training steps, each doing one thing: what one process of a run does from spec to saved adapter.

A one-GPU run (worker.engine.train) and every rank of a multi-GPU run (worker.engine.distributed) call the
same steps; the pre-flight estimate (worker.engine.estimate) adapts its skeleton with `adapt` as training
adapts the loaded base. Nothing here claims, leases or ends a run: that is worker.engine.train's story.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    set_seed,
)

from app import runs
from app.config import get_settings
from app.contracts.events import LogEvent, ParamsEvent, artifact_event
from app.models import Artifact, ArtifactKind
from app.rundir import RunDir, checkpoint_step
from app.schemas import RunSpec
from worker.data.hub import model_source, name_the_base
from worker.engine.callbacks import MetricsCallback
from worker.engine.configs import (
    check_module_names,
    model_dtype,
    peft_config,
    quantization_config,
    vllm_lora_incompatibility,
)
from worker.engine.evaluate import evaluate_after_training
from worker.engine.failures import model_not_found
from worker.engine.fastpaths import micro_batch_auto
from worker.engine.micro_batch import OomSplitter
from worker.engine.objectives import TrainingSetup, engine
from worker.engine.objectives.base import starting_adapter_dir
from worker.runtime.publisher import EventPublisher

log = logging.getLogger(__name__)


def prepare_training(spec: RunSpec, run_dir: RunDir) -> TrainingSetup:
    """Everything up to Trainer; each process of a multi-GPU run builds its own copy. The objective's module
    (worker.engine.objectives) gives the arguments and the data."""
    objective = engine(spec)
    args = objective.training_arguments(spec, run_dir.checkpoints_dir)  # first: it refuses a precision the device lacks
    # Trainer's default averages a NaN loss away in the logs (a diverged run would log 0.0 and go on).
    args.logging_nan_inf_filter = False
    set_seed(spec.seed)  # before the adapter exists: its initial weights come from this seed
    tokenizer = load_tokenizer(spec)
    train_data, eval_data = objective.load_data(spec, tokenizer)
    check_module_names(spec)
    model = apply_adapter(load_model(spec), spec)
    return TrainingSetup(args, tokenizer, train_data, eval_data, model)


def report_params(model: PeftModel, run_id: str, sessions: sessionmaker[Session], publisher: EventPublisher) -> None:
    trainable, total = model.get_nb_trainable_parameters()
    with sessions() as session:
        runs.record_params(session=session, run_id=run_id, params_all=total, params_trainable=trainable)
    percent = 100.0 * trainable / total if total else 0.0
    publisher.publish(ParamsEvent(all=total, trainable=trainable, percent=percent))
    log.info("trainable params: %d || all params: %d || trainable%%: %.4f", trainable, total, percent)


def fit(trainer: Trainer, checkpoint: Path | None, callback: MetricsCallback | None) -> None:
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        if callback is not None:
            callback.close()  # its control thread ends with training, whichever way training ended
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
            details |= best_checkpoint(trainer, publisher)
    elif setup.eval_data is not None and not evaluated_at(trainer, trainer.state.global_step):
        # Trainer evaluates at its last step by itself when evaluating every N steps; not when eval_steps is 0,
        # nor when the run was stopped early.
        trainer.evaluate()
        if callback is not None:
            callback.flush()
    return details


def evaluated_at(trainer: Trainer, step: int) -> bool:
    return any(entry.get("step") == step and "eval_loss" in entry for entry in trainer.state.log_history)


def save_results(
    setup: TrainingSetup,
    spec: RunSpec,
    run_dir: RunDir,
    sessions: sessionmaker[Session],
    publisher: EventPublisher,
    details: dict[str, Any],
) -> None:
    """The adapter and its artifact row, then base beside adapter on the eval rows and regression prompts."""
    save_adapter(setup.model, spec.base_model, run_dir, sessions, publisher, details)
    evaluate_after_training(
        setup.model, setup.tokenizer, spec, run_dir.run_id, run_dir.adapter_dir, sessions, publisher
    )


def best_checkpoint(trainer: Trainer, publisher: EventPublisher) -> dict[str, Any]:
    """Which checkpoint Trainer loaded back as the result (early stopping keeps the best eval loss)."""
    best = trainer.state.best_model_checkpoint
    if best is None:
        return {}
    step = checkpoint_step(best)
    if step is None:
        return {}
    # state.best_metric may belong to an evaluation without a checkpoint; the log has the loaded one's.
    losses = [e["eval_loss"] for e in trainer.state.log_history if e.get("step") == step and "eval_loss" in e]
    loss = float(losses[-1]) if losses else trainer.state.best_metric
    stopped = trainer.state.global_step
    line = f"kept the checkpoint of step {step} (eval loss {loss:.4f}) as the result; training ended at step {stopped}"
    log.info(line)
    publisher.publish(LogEvent(lines=[line]))
    return {"best_step": step, "best_eval_loss": loss, "stopped_at_step": stopped}


def device() -> str:
    # LOCAL_RANK: this process's GPU in a multi-GPU run (worker/engine/distributed.py); unset, the first one.
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def load_tokenizer(spec: RunSpec) -> PreTrainedTokenizerBase:
    trust = get_settings().allow_trust_remote_code
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_source(spec.base_model), trust_remote_code=trust)
    except OSError as exc:  # the first read of base_model: a hub id that does not resolve fails here
        raise model_not_found(spec.base_model, exc) from exc
    if tokenizer.pad_token_id is None:
        # Padding is masked out of the loss and attention, so any id will do; eos is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer  # type: ignore[no-any-return]


def load_model(spec: RunSpec) -> PreTrainedModel:
    """The frozen base: 4-bit or 8-bit through bitsandbytes, or full precision; on the GPU when there is one."""
    model = AutoModelForCausalLM.from_pretrained(
        model_source(spec.base_model),
        device_map={"": device()},
        dtype=model_dtype(spec),
        quantization_config=quantization_config(spec),
        trust_remote_code=get_settings().allow_trust_remote_code,
        use_safetensors=True,
    )
    model.config.use_cache = False  # the KV cache only helps generation and costs memory in training
    keep_one_4bit_format(model)
    return model  # type: ignore[no-any-return]


def keep_one_4bit_format(model: PreTrainedModel) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weights for its inference kernel at the
    layer's first forward pass in eval mode, and every later training step runs on the repacked weights: the
    first evaluation during training would move a QLoRA run onto other numbers (one batch's loss 4.63596 before
    an eval forward, 4.64073 after). A run trains, and is evaluated, on the format it was loaded in."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            setattr(module, "support_avx512bf16_for_cpu", False)  # noqa: B010 (an attribute nn.Module does not declare)


def apply_adapter(model: PreTrainedModel, spec: RunSpec) -> PeftModel:
    """The run's adapter on the loaded base: a fresh one, or with `init_from_run` that run's adapter, trainable."""
    quantized = bool(getattr(model, "is_quantized", False))
    if spec.init_from_run:
        return continue_adapter(model, spec, quantized=quantized)
    config = peft_config(spec, model_type=model.config.model_type)
    return adapt(model, config, quantized=quantized, gradient_checkpointing=spec.gradient_checkpointing == "on")


def continue_adapter(model: PreTrainedModel, spec: RunSpec, *, quantized: bool) -> PeftModel:
    """The adapter of the run this one continues, loaded trainable onto the base (QLoRA's 4-bit one too). Its
    own config (r, alpha, target modules) comes with it: the spec's adapter fields do not reshape it."""
    adapter_dir = starting_adapter_dir(spec.init_from_run)
    model = _prepared(model, quantized=quantized, gradient_checkpointing=spec.gradient_checkpointing == "on")
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    # The saved config names the base publicly (name_the_base); PEFT looks that name up when saving, so it names
    # the local base again until save_adapter names it publicly once more.
    peft_model.peft_config["default"].base_model_name_or_path = model.name_or_path
    log.info("continuing from run %s: its adapter (%s) is the starting point", spec.init_from_run, adapter_dir)
    return _trained_in_fp32(peft_model)


def _prepared(model: PreTrainedModel, *, quantized: bool, gradient_checkpointing: bool) -> PreTrainedModel:
    if quantized:
        # Freezes the quantized base and upcasts norms to fp32 for stable training.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    return model


def adapt(model: PreTrainedModel, config: PeftConfig, *, quantized: bool, gradient_checkpointing: bool) -> PeftModel:
    """PEFT on a base (a loaded one, or the estimate's skeleton): a quantized base is prepared first, and
    every trained weight is kept in fp32."""
    model = _prepared(model, quantized=quantized, gradient_checkpointing=gradient_checkpointing)
    peft_model: PeftModel = get_peft_model(model, config)  # type: ignore[assignment]
    return _trained_in_fp32(peft_model)


def _trained_in_fp32(peft_model: PeftModel) -> PeftModel:
    for parameter in peft_model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            # Trained weights stay fp32 (a copied lm_head would be bf16/fp16 on a half-precision base): the
            # fp16 grad scaler refuses half-precision grads, and small updates vanish in bf16.
            parameter.data = parameter.data.float()
    return peft_model


def build_trainer(setup: TrainingSetup, spec: RunSpec, *callbacks: TrainerCallback) -> Trainer:
    """The objective's trainer (transformers' Trainer for SFT, TRL's for the preference objectives)."""
    trainer = engine(spec).build_trainer(setup, spec, *callbacks)
    trainer.evaluate = keeping_random_state(trainer.evaluate)  # type: ignore[method-assign]
    if micro_batch_auto(spec) and torch.cuda.is_available() and trainer.args.world_size == 1:
        # A pass that runs out of GPU memory is redone in halves; the run goes on. One GPU only: a rank redoing
        # a pass alone would leave the others waiting in their all-reduce.
        OomSplitter(trainer)
    return trainer


def keeping_random_state(evaluate: Callable[..., Any]) -> Callable[..., Any]:
    """`evaluate` that leaves torch's random state as it found it. Each evaluation's data loader draws its seed
    from torch's global generator, which also orders the training rows of the next epoch: without this, a run
    with evaluations during training draws other dropout masks (and, past an epoch, other batches) than the same
    run without them."""

    @functools.wraps(evaluate)
    def evaluate_keeping_random_state(*args: Any, **kwargs: Any) -> Any:
        cpu = torch.get_rng_state()
        gpus = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            return evaluate(*args, **kwargs)
        finally:
            torch.set_rng_state(cpu)
            if gpus is not None:
                torch.cuda.set_rng_state_all(gpus)

    return evaluate_keeping_random_state


def save_adapter(
    model: PeftModel,
    base_model: str,
    run_dir: RunDir,
    sessions: sessionmaker[Session],
    publisher: EventPublisher,
    details: dict[str, Any],
) -> None:
    """Save in PEFT's own format (adapter_config.json + adapter_model.safetensors) and record the artifact,
    saying whether vLLM can serve it as a LoRA."""
    run_id, adapter_dir = run_dir.run_id, run_dir.adapter_dir
    shutil.rmtree(adapter_dir, ignore_errors=True)  # a resumed run must not mix files of two attempts
    # Only the trained adapter: a preference run continued from another also holds TRL's frozen "ref" copy.
    model.save_pretrained(str(adapter_dir), safe_serialization=True, selected_adapters=["default"])
    name_the_base(adapter_dir, base_model)
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    details = details | {"vllm": vllm_lora_incompatibility(adapter_config)}
    with sessions() as session:
        # An attempt killed between saving and finishing left its row; this adapter replaces that one.
        session.execute(delete(Artifact).where(Artifact.run_id == run_id, Artifact.kind == ArtifactKind.adapter))
        artifact = runs.adapter_artifact(run_dir, details)
        session.add(artifact)
        session.commit()
        event = artifact_event(artifact)
        log.info("adapter saved to %s (%d bytes as an archive)", adapter_dir, artifact.size_bytes)
    publisher.publish(event)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
