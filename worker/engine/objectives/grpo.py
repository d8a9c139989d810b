"""GRPO through TRL's GRPOTrainer, on our PeftModel: each prompt's group of sampled completions scored by the run's
built-in rewards (worker.engine.rewards), and a handful of them shown on the run page as training goes.

The data: a prompt/completion row gives its prompt and, as the `reference` the rewards compare with, its completion;
a messages row gives its turns up to the last assistant one (rendered with the run's chat template) and that turn's
text. The reference for beta > 0 is the starting policy, as for the preference objectives (preference.settle): the
base for a fresh adapter, the starting adapter for a run continued from another.

GRPO has no eval loss, so TRL evaluates nothing during training; the held-out measure is the reward evaluation
after training (worker.engine.objectives.grpo_eval).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset
from transformers import (
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from trl import GRPOConfig, GRPOTrainer

from app.config import get_settings
from app.contracts.events import SamplesEvent
from app.rundir import RunDir
from app.schemas import RunSpec
from worker.data.chat import resolve_chat_template
from worker.data.encode import DatasetError
from worker.data.files import Row, template_turns
from worker.engine.callbacks import BaseNamedPublicly, MetricsCallback
from worker.engine.configs import training_callbacks, training_kwargs
from worker.engine.objectives.base import TrainingSetup
from worker.engine.objectives.preference import preference_rows, settle, trained_weights_kept
from worker.engine.rewards import SampleCollector, reward_functions
from worker.runtime.publisher import EventPublisher

log = logging.getLogger(__name__)

SAMPLES_EVERY_STEPS = 5  # sampled completions on the run page: at the first log, then at logs this many steps apart
SAMPLES_SHOWN = 4  # completions of one prompt per samples event
SAMPLES_FILE_CAP = 4 * 1024 * 1024  # samples.jsonl stops growing past this many bytes (the events still go out)


def training_arguments(spec: RunSpec, checkpoints_dir: Path) -> GRPOConfig:
    return GRPOConfig(
        **training_kwargs(spec, checkpoints_dir)
        | {
            # No evaluation during training: TRL would sample a group for every eval prompt for a loss that means
            # little; the reward evaluation after training is the held-out measure.
            "eval_strategy": "no",
            "eval_steps": None,
            "batch_eval_metrics": False,
            "load_best_model_at_end": False,
            "metric_for_best_model": None,
            "greater_is_better": None,
            # TRL counts the tokens itself (prompt + completion of every completion trained on); Trainer's count
            # looks for input_ids in a batch that holds rows, and warns at every step.
            "include_num_input_tokens_seen": "no",
            "remove_unused_columns": False,  # the reward functions read the `reference` column
            # The policy's training forward then matches the reference's (and its own sampling pass): the first
            # step's KL is 0, as the preference objectives' first loss is ln 2.
            "disable_dropout": True,
            "num_generations": spec.num_generations,
            "max_completion_length": spec.max_completion_length,
            "temperature": spec.temperature,
            "beta": spec.beta,
            "loss_type": spec.loss_type,
            "epsilon": spec.epsilon,
            "reward_weights": [reward.weight for reward in spec.rewards],
            "log_completions": False,  # our samples go to the run page (SamplesCallback), not to stdout/parquet
        }
    )


def grpo_record(row: Row) -> dict[str, Any]:
    """A row as GRPOTrainer takes it: the prompt (text, or the turns before the last assistant one) and the answer
    the rewards compare with, as `reference`."""
    if row.shape == "messages":
        last = max(i for i, turn in enumerate(row.messages) if turn["role"] == "assistant")
        # Without "weight" (SFT's loss mask): TRL hands the turns to the chat template, and a Dataset of turns
        # where only some carry it would give every turn a null weight.
        return {"prompt": template_turns(row.messages[:last]), "reference": row.messages[last]["content"]}
    return {"prompt": row.prompt, "reference": row.completion}


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict[str, str]]) -> list[int]:
    """The ids GRPOTrainer generates from: the tokenizer's own encoding of a text prompt (bos + text, as SFT
    encodes it), or the conversation through the chat template with the assistant's turn opened."""
    if isinstance(prompt, list):
        rendered: Any = tokenizer.apply_chat_template(
            prompt, tokenize=True, return_dict=True, add_generation_prompt=True
        )
        return list(rendered["input_ids"])
    return list(tokenizer(text=prompt)["input_ids"])


def load_data(spec: RunSpec, tokenizer: PreTrainedTokenizerBase) -> tuple[Any, Any | None]:
    """The train prompts with their references; no eval data for TRL (the held-out rows are scored after training).
    Prompts longer than max_seq_length tokens are left out, so a step's length stays within max_seq_length +
    max_completion_length (what the memory estimate counts)."""
    datasets.disable_progress_bars()
    train, held_out = preference_rows(spec)
    if any(row.messages for row in train):
        tokenizer.chat_template = resolve_chat_template(tokenizer, spec.chat_template)
    records = [grpo_record(row) for row in train]
    kept = [record for record in records if len(prompt_ids(tokenizer, record["prompt"])) <= spec.max_seq_length]
    if not kept:
        raise DatasetError(
            f"max_seq_length: every prompt of {Path(spec.dataset).name} is longer than {spec.max_seq_length} tokens; "
            "raise max_seq_length (for GRPO it bounds the prompt; completions add max_completion_length)"
        )
    if len(kept) < len(records):
        log.warning(
            "%d of %d prompts are longer than max_seq_length (%d tokens) and are left out",
            len(records) - len(kept),
            len(records),
            spec.max_seq_length,
        )
    log.info("dataset: %d train prompts, %d eval rows (grpo)", len(kept), len(held_out))
    return Dataset.from_list(kept), None


def build_trainer(setup: TrainingSetup, spec: RunSpec, *callbacks: TrainerCallback) -> Trainer:
    samples = SampleCollector()
    scorers: list[Any] = reward_functions(list(spec.rewards), samples)  # TRL types its scores float | None
    reporting = [SamplesCallback.of(metrics, samples) for metrics in callbacks if isinstance(metrics, MetricsCallback)]
    with trained_weights_kept(setup.model):
        trainer = GRPOTrainer(
            model=setup.model,
            reward_funcs=scorers,
            args=setup.args,  # type: ignore[arg-type]  # training_arguments' GRPOConfig
            train_dataset=setup.train_data,
            processing_class=setup.tokenizer,
            callbacks=[BaseNamedPublicly(spec.base_model), *callbacks, *reporting, *training_callbacks(spec)],
        )
    return settle(trainer, spec)


class SamplesCallback(TrainerCallback):
    """A few completions of one prompt with their rewards, from the generation batch of the step just logged: at
    the first log, then at the first log at least SAMPLES_EVERY_STEPS steps after the last (at every log when
    logging_steps is SAMPLES_EVERY_STEPS or more). Published as a `samples` event and appended to samples.jsonl,
    which stops growing past SAMPLES_FILE_CAP bytes."""

    def __init__(self, latest: Callable[[int], SamplesEvent | None], publisher: EventPublisher, path: Path) -> None:
        self.latest = latest
        self.publisher = publisher
        self.path = path
        self.last_step: int | None = None
        self.capped = False

    @classmethod
    def of(cls, metrics: MetricsCallback, samples: SampleCollector) -> SamplesCallback:
        """Beside the run's MetricsCallback (rank 0 of a multi-GPU run), with its publisher and run folder."""
        path = RunDir.of(metrics.run_id, get_settings()).samples_file

        def latest(step: int) -> SamplesEvent | None:
            return samples.latest(step, limit=SAMPLES_SHOWN)

        return cls(latest, metrics.publisher, path)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        step = state.global_step
        if "loss" not in (logs or {}) or (self.last_step is not None and step - self.last_step < SAMPLES_EVERY_STEPS):
            return
        event = self.latest(step)
        if event is None:
            return
        self.last_step = step
        self.publisher.publish(event)
        self.append(event)

    def append(self, event: SamplesEvent) -> None:
        line = json.dumps(event.data(), ensure_ascii=False) + "\n"
        size = self.path.stat().st_size if self.path.exists() else 0
        if size + len(line.encode()) > SAMPLES_FILE_CAP:
            if not self.capped:
                log.info("samples.jsonl holds %d bytes: later samples go to the run page only", size)
                self.capped = True
            return
        with self.path.open("a", encoding="utf-8") as file:
            file.write(line)
