"""ORPO through TRL's ORPOTrainer (trl.experimental): supervised loss on chosen plus an odds-ratio term; no
reference, so no reference forward pass either."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from app.schemas import RunSpec
from worker.engine.objectives.base import TrainingSetup
from worker.engine.objectives.preference import preference_data, trl_kwargs, trl_trainer


def training_arguments(spec: RunSpec, checkpoints_dir: Path) -> ORPOConfig:
    # ORPO's collator needs the raw columns kept (it sets remove_unused_columns back itself, with a warning).
    return ORPOConfig(**trl_kwargs(spec, checkpoints_dir) | {"remove_unused_columns": False})


def load_data(spec: RunSpec, tokenizer: PreTrainedTokenizerBase) -> tuple[Any, Any | None]:
    return preference_data(spec, tokenizer)


def build_trainer(setup: TrainingSetup, spec: RunSpec, *callbacks: TrainerCallback) -> Trainer:
    return trl_trainer(ORPOTrainer, setup, spec, callbacks)
