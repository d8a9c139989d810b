"""KTO through TRL's KTOTrainer: unpaired rows (prompt, completion, label), or pairs that TRL unpairs itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback
from trl import KTOConfig, KTOTrainer

from app.schemas import RunSpec
from worker.engine.objectives.base import TrainingSetup
from worker.engine.objectives.preference import preference_data, trl_kwargs, trl_trainer


def training_arguments(spec: RunSpec, checkpoints_dir: Path) -> KTOConfig:
    return KTOConfig(
        **trl_kwargs(spec, checkpoints_dir),
        desirable_weight=spec.desirable_weight,
        undesirable_weight=spec.undesirable_weight,
    )


def load_data(spec: RunSpec, tokenizer: PreTrainedTokenizerBase) -> tuple[Any, Any | None]:
    return preference_data(spec, tokenizer)


def build_trainer(setup: TrainingSetup, spec: RunSpec, *callbacks: TrainerCallback) -> Trainer:
    return trl_trainer(KTOTrainer, setup, spec, callbacks)
