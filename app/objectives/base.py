"""What an objective declares (app.objectives has the registry)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Dataset row shapes (worker.data.files reads them; app.dataset_shapes tells them from a file's first row).
SHAPE_NAMES: dict[str, str] = {
    "prompt_completion": "prompt/completion",
    "messages": "messages",
    "text": "text",
    "preference": "prompt/chosen/rejected",
    "unpaired": "prompt/completion/label",
}


@dataclass(frozen=True)
class Series:
    """A named value the objective's trainer logs (TRL's name, e.g. rewards/margins), drawn in a panel."""

    key: str
    label: str
    panel: str


@dataclass(frozen=True)
class Panel:
    """A chart on the run page beside the loss: its series share one y axis."""

    key: str
    title: str
    unit: str = ""


@dataclass(frozen=True)
class Objective:
    name: str
    label: str
    summary: str  # one line: what it trains the model to do
    shapes: tuple[str, ...]  # the dataset shapes it trains on (SHAPE_NAMES)
    methods: tuple[str, ...]  # the PEFT methods it allows
    fields: tuple[str, ...] = ()  # RunSpec fields that apply to it (and to the objectives naming them) alone
    series: tuple[Series, ...] = ()  # named metrics beyond loss and learning rate
    panels: tuple[Panel, ...] = ()
    # After training: "task" answers the eval rows (exact match, fields right); "preference" also scores the eval
    # pairs (share where chosen is more likely than rejected, mean margin); "reward" also scores the answers with
    # the run's rewards (greedy, and sampled at its temperature); base or starting adapter beside adapter.
    evaluation: Literal["task", "preference", "reward"] = "task"
    reference: bool = False  # trains against a frozen reference policy (the adapter disabled, or the starting one)
    # Sequences a training example puts through the model (a pair: chosen and rejected; KTO: the answer and the
    # mismatched one its KL term reads), for the memory estimate.
    sequences_per_example: int = 1
    min_batch_size: int = 1  # rows a batch needs (KTO's KL term compares each answer with another row's prompt)
    # Writes completions while it trains (GRPO): a step's sequences are prompt + max_completion_length long, a batch
    # holds whole groups of num_generations completions, and generating them is a memory peak of its own.
    generates: bool = False
    eval_loss: bool = True  # has a held-out loss to evaluate during training (and early stopping to read)
    beta_above_zero: bool = False  # beta weighs a term that means nothing at 0 (DPO, ORPO, KTO)
    defaults: dict[str, object] = field(default_factory=dict)  # what the form proposes when it is chosen
    losses: tuple[str, ...] = ()  # its choices of loss_type (app.objectives.losses), when it takes one
    # RunSpec values that differ for this objective, taken when a spec does not give them (its loss_type, beta).
    spec_defaults: dict[str, object] = field(default_factory=dict)

    def shapes_named(self) -> str:
        return " or ".join(SHAPE_NAMES.get(shape, shape) for shape in self.shapes)
