"""What DPO, ORPO and KTO share on the worker: pairs (or unpaired rows) in TRL's dataset format, their TRL config
built from the run's TrainingArguments, the reference, and where the starting adapter of `init_from_run` lies.

The reference is never a second copy of the model. TRL, given a PeftModel, adds a frozen "ref" adapter copied
from the trained one: for a run continued from another, that copy is the starting adapter, the reference the
usual SFT-then-DPO recipe wants; for a fresh adapter it is deleted, so TRL disables the adapter instead and the
reference is the base itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from datasets import Dataset
from peft import PeftModel
from transformers import PreTrainedTokenizerBase, PrinterCallback, Trainer

from app.objectives import REGISTRY
from app.objectives.base import SHAPE_NAMES
from app.schemas import RunSpec
from worker.data.chat import resolve_chat_template
from worker.data.encode import DatasetError, split_rows
from worker.data.files import Row, read_rows
from worker.engine.callbacks import BaseNamedPublicly
from worker.engine.configs import training_callbacks, training_kwargs
from worker.engine.objectives.base import TrainingSetup

log = logging.getLogger(__name__)

REFERENCE_ADAPTER = "ref"  # TRL's name for its frozen copy of the trained adapter
TRAINED_ADAPTER = "default"  # PEFT's name for the adapter a run trains and saves


def preference_rows(spec: RunSpec) -> tuple[list[Row], list[Row]]:
    """The run's train and held-out rows as read (the held-out ones split as worker.data.encode splits them),
    refused with the shape the objective needs when the file holds another."""
    path = Path(spec.dataset)
    rows = _checked(read_rows(path), spec, "dataset", path)
    held_out: list[Row] = []
    if spec.eval_split:
        rows, held_out = split_rows(rows, spec.eval_split, spec.seed)
    elif spec.eval_dataset:
        held_out = _checked(read_rows(spec.eval_dataset), spec, "eval_dataset", Path(spec.eval_dataset))
    return rows, held_out


def _checked(rows: list[Row], spec: RunSpec, field: str, path: Path) -> list[Row]:
    objective = REGISTRY[spec.objective]
    if rows and rows[0].shape not in objective.shapes:
        # The web refuses this before queueing (it reads the file's first row); a spec file meets it here.
        raise DatasetError(
            f"{field}: {path.name} holds {SHAPE_NAMES[rows[0].shape]} rows but objective {spec.objective} trains on "
            f"{objective.shapes_named()} rows; pick such a file, or the objective that fits the file"
        )
    return rows  # a file mixing text and conversational prompts is refused by worker.data.files already


def trl_record(row: Row) -> dict[str, Any]:
    """A row as TRL's trainers take it: plain text, or conversational (the prompt's turns; each answer a list
    holding one assistant turn)."""

    def answer(text: str) -> str | list[dict[str, str]]:
        return [{"role": "assistant", "content": text}] if row.messages else text

    prompt: str | list[dict[str, str]] = row.messages or row.prompt
    if row.shape == "preference":
        return {"prompt": prompt, "chosen": answer(row.chosen), "rejected": answer(row.rejected)}
    return {"prompt": prompt, "completion": answer(row.completion), "label": bool(row.label)}


def preference_data(spec: RunSpec, tokenizer: PreTrainedTokenizerBase) -> tuple[Dataset, Dataset | None]:
    """The run's rows as TRL datasets. Conversational rows render with the run's chat template (the tokenizer's
    own, or the named one), as SFT renders them."""
    datasets.disable_progress_bars()  # progress goes to the run's events, not to the worker's stderr
    train, held_out = preference_rows(spec)
    if any(row.messages for row in train):
        tokenizer.chat_template = resolve_chat_template(tokenizer, spec.chat_template)
    log.info("dataset: %d train rows, %d eval rows (%s)", len(train), len(held_out), spec.objective)
    return _dataset(train), _dataset(held_out) if held_out else None


def _dataset(rows: list[Row]) -> Dataset:
    return Dataset.from_list([trl_record(row) for row in rows])


def trl_kwargs(spec: RunSpec, checkpoints_dir: Path) -> dict[str, Any]:
    """TRL config keywords: our TrainingArguments' (precision, optimizer, schedule, checkpoints, logging), then what
    the preference objectives share. TRL's own defaults stay where we say nothing (dropout off in the policy, as
    the reference has none: at step one both agree and DPO's loss is ln 2)."""
    return training_kwargs(spec, checkpoints_dir) | {
        "max_length": spec.max_seq_length,
        "beta": spec.beta,
        # No token accuracy here (compute_metrics would make TRL run an extra forward pass for logits).
        "batch_eval_metrics": False,
        "remove_unused_columns": True,  # TRL's collators take its tokenized columns alone
    }


def trl_trainer(trainer_class: type[Trainer], setup: TrainingSetup, spec: RunSpec, callbacks: Sequence[Any]) -> Trainer:
    """One of TRL's preference trainers on the run's PeftModel, data and callbacks, made ours (`settle`)."""
    with trained_weights_kept(setup.model):
        trainer = trainer_class(
            model=setup.model,
            args=setup.args,
            train_dataset=setup.train_data,
            eval_dataset=setup.eval_data,
            processing_class=setup.tokenizer,
            callbacks=[BaseNamedPublicly(spec.base_model), *callbacks, *training_callbacks(spec)],
        )
    return settle(trainer, spec)


@contextlib.contextmanager
def trained_weights_kept(model: PeftModel) -> Iterator[None]:
    """Around building a TRL trainer: the trained weights as they were before. TRL rounds a quantized base's
    trained weights to bf16 (QLoRA's paper recipe), after copying them into its "ref" adapter; ours stay fp32
    (steps.adapt), so a run continued from another starts from the very weights of its reference (QLoRA's first-step
    KL was 3e-9, not 0)."""
    kept = {name: parameter.detach().clone() for name, parameter in model.named_parameters() if parameter.requires_grad}
    yield
    parameters = dict(model.named_parameters())
    for name, value in kept.items():
        parameters[name].data = value


def settle(trainer: Trainer, spec: RunSpec) -> Trainer:
    """A TRL trainer made ours: the reference as the module docstring says, trained weights in fp32 (TRL casts a
    quantized base's to bf16; steps.adapt keeps them fp32, where small updates do not vanish), no stdout log."""
    model = trainer.model
    if model is None:
        return trainer
    if isinstance(model, PeftModel) and REFERENCE_ADAPTER in model.peft_config and not spec.init_from_run:
        model.delete_adapter(REFERENCE_ADAPTER)
        model.set_adapter(TRAINED_ADAPTER)
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    trainer.remove_callback(PrinterCallback)  # it prints every log to stdout; ours go to train.log and Redis
    return trainer
