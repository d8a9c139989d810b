"""What every objective's engine module gives the training steps (worker.engine.steps), and what they hand it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from peft import PeftModel
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments

from app.config import get_settings
from app.rundir import RunDir
from app.schemas import RunSpec
from worker.errors import RunError


@dataclass
class TrainingSetup:
    """What a training process builds from the spec before Trainer: arguments, tokenizer, data, adapted model."""

    args: TrainingArguments
    tokenizer: PreTrainedTokenizerBase
    train_data: Any
    eval_data: Any | None
    model: PeftModel


class ObjectiveEngine(Protocol):
    """A module of worker.engine.objectives, named as app.objectives names the objective."""

    def training_arguments(self, spec: RunSpec, checkpoints_dir: Path) -> TrainingArguments: ...

    def load_data(self, spec: RunSpec, tokenizer: PreTrainedTokenizerBase) -> tuple[Any, Any | None]: ...

    def build_trainer(self, setup: TrainingSetup, spec: RunSpec, *callbacks: TrainerCallback) -> Trainer: ...


def starting_adapter_dir(run_id: str) -> Path:
    """The finished adapter of the run a new one continues from (training's own, or the checkpoint a user took as
    the adapter: both lie in its adapter folder); RunError when it is gone."""
    adapter_dir = RunDir.of(run_id, get_settings()).adapter_dir
    if not (adapter_dir / "adapter_config.json").is_file():
        raise RunError(
            f"init_from_run: run {run_id} has no adapter any more ({adapter_dir} is missing or incomplete); "
            "pick a succeeded or stopped run whose adapter is still there, or leave init_from_run empty"
        )
    return adapter_dir


STARTING_ADAPTER = "start"  # the starting adapter's name where evaluation loads it beside the trained one


@contextlib.contextmanager
def starting_point(model: PeftModel, spec: RunSpec) -> Iterator[None]:
    """The model a run started from, for the "base" side of its evaluation: the base with the adapter off, or
    for a continued run the starting run's adapter (loaded beside the trained one when not there yet)."""
    if not spec.init_from_run:
        with model.disable_adapter():
            yield
        return
    if STARTING_ADAPTER not in model.peft_config:
        model.load_adapter(str(starting_adapter_dir(spec.init_from_run)), STARTING_ADAPTER, is_trainable=False)
    active = model.active_adapter
    model.set_adapter(STARTING_ADAPTER)
    try:
        yield
    finally:
        model.set_adapter(active)
