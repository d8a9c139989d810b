"""Direct preference optimization through TRL's DPOTrainer, on our PeftModel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback
from trl import DPOConfig, DPOTrainer

from app.schemas import RunSpec
from worker.engine.callbacks import BaseNamedPublicly
from worker.engine.configs import training_callbacks
from worker.engine.objectives.base import TrainingSetup
from worker.engine.objectives.preference import preference_data, settle, trl_kwargs


def training_arguments(spec: RunSpec, checkpoints_dir: Path) -> DPOConfig:
    return DPOConfig(
        **trl_kwargs(spec, checkpoints_dir), loss_type=[spec.loss_type], label_smoothing=spec.label_smoothing
    )


def load_data(spec: RunSpec, tokenizer: PreTrainedTokenizerBase) -> tuple[Any, Any | None]:
    return preference_data(spec, tokenizer)


def build_trainer(setup: TrainingSetup, spec: RunSpec, *callbacks: TrainerCallback) -> Trainer:
    trainer = DPOTrainer(
        model=setup.model,
        args=setup.args,  # type: ignore[arg-type]
        train_dataset=setup.train_data,
        eval_dataset=setup.eval_data,
        processing_class=setup.tokenizer,
        callbacks=[BaseNamedPublicly(spec.base_model), *callbacks, *training_callbacks(spec)],
    )
    return settle(trainer, spec)
