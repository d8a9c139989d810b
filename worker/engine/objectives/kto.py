"""KTO through TRL's KTOTrainer: unpaired rows (prompt, completion, label), or pairs that TRL unpairs itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback
from trl import KTOConfig, KTOTrainer

from app.schemas import RunSpec
from worker.engine.callbacks import BaseNamedPublicly
from worker.engine.configs import training_callbacks
from worker.engine.objectives.base import TrainingSetup
from worker.engine.objectives.preference import preference_data, settle, trl_kwargs


def training_arguments(spec: RunSpec, checkpoints_dir: Path) -> KTOConfig:
    return KTOConfig(
        **trl_kwargs(spec, checkpoints_dir),
        desirable_weight=spec.desirable_weight,
        undesirable_weight=spec.undesirable_weight,
    )


def load_data(spec: RunSpec, tokenizer: PreTrainedTokenizerBase) -> tuple[Any, Any | None]:
    return preference_data(spec, tokenizer)


def build_trainer(setup: TrainingSetup, spec: RunSpec, *callbacks: TrainerCallback) -> Trainer:
    trainer = KTOTrainer(
        model=setup.model,
        args=setup.args,  # type: ignore[arg-type]
        train_dataset=setup.train_data,
        eval_dataset=setup.eval_data,
        processing_class=setup.tokenizer,
        callbacks=[BaseNamedPublicly(spec.base_model), *callbacks, *training_callbacks(spec)],
    )
    return settle(trainer, spec)
