"""Supervised fine-tuning: the rows encoded by worker.data.encode (labels on the answers), transformers' Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from app.schemas import RunSpec
from worker.data.encode import load_training_data, make_collator
from worker.engine.callbacks import BaseNamedPublicly
from worker.engine.configs import training_arguments as sft_training_arguments
from worker.engine.configs import training_callbacks
from worker.engine.objectives.base import TrainingSetup
from worker.engine.token_accuracy import TokenAccuracy, predicted_tokens


def training_arguments(spec: RunSpec, checkpoints_dir: Path) -> TrainingArguments:
    return sft_training_arguments(spec, checkpoints_dir)


def load_data(spec: RunSpec, tokenizer: PreTrainedTokenizerBase) -> tuple[Any, Any | None]:
    return load_training_data(spec, tokenizer)


def build_trainer(setup: TrainingSetup, spec: RunSpec, *callbacks: TrainerCallback) -> Trainer:
    trainer = Trainer(
        model=setup.model,
        args=setup.args,
        train_dataset=setup.train_data,
        eval_dataset=setup.eval_data,
        data_collator=make_collator(spec, setup.tokenizer, setup.model.config._attn_implementation),
        processing_class=setup.tokenizer,
        callbacks=[BaseNamedPublicly(spec.base_model), *callbacks, *training_callbacks(spec)],
        # Token accuracy beside the eval loss, from the same forward pass.
        compute_metrics=TokenAccuracy() if setup.eval_data is not None else None,
        preprocess_logits_for_metrics=predicted_tokens if setup.eval_data is not None else None,
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log to stdout; ours go to train.log and Redis
    return trainer
