"""Direct preference optimization through TRL's DPOTrainer, on our PeftModel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback
from trl import DPOConfig, DPOTrainer

from app.schemas import RunSpec
from worker.engine.objectives.base import TrainingSetup
from worker.engine.objectives.preference import preference_data, trl_kwargs, trl_trainer


def training_arguments(spec: RunSpec, checkpoints_dir: Path) -> DPOConfig:
    return DPOConfig(
        **trl_kwargs(spec, checkpoints_dir), loss_type=[spec.loss_type], label_smoothing=spec.label_smoothing
    )


def load_data(spec: RunSpec, tokenizer: PreTrainedTokenizerBase) -> tuple[Any, Any | None]:
    return preference_data(spec, tokenizer)


def build_trainer(setup: TrainingSetup, spec: RunSpec, *callbacks: TrainerCallback) -> Trainer:
    return trl_trainer(DPOTrainer, setup, spec, callbacks)
