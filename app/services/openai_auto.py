"""`auto` hyperparameters of a fine-tuning job: a recipe from the base model and the training file's size.

A local base model may ship its recommended recipe beside its weights (`recipe.json`: the bundled tiny model's
is measured to make the sample task learn in chat form); any other base gets the general rule below, which
follows OpenAI's published behaviour (about 3 epochs, more for a small file and fewer for a large one) with
LoRA's usual learning rate. Every value a job asked for stands; only the `auto` (or missing) ones are chosen,
and the job reports the numbers it trains with, never "auto".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.objectives import REGISTRY

RECIPE_FILE = "recipe.json"
RECIPE_MAX_BYTES = 64 * 1024
# Epochs x rows the general rule aims at: OpenAI's documented range of 3,000-25,000 examples trained on.
MIN_EXAMPLES, MAX_EXAMPLES, DEFAULT_EPOCHS, MAX_EPOCHS = 3_000, 25_000, 3, 10
SFT_LEARNING_RATE = 2e-4  # RunSpec's default: LoRA's usual rate
DPO_LEARNING_RATE = float(str(REGISTRY["dpo"].defaults["learning_rate"]))  # 5e-5
DPO_BETA = float(str(REGISTRY["dpo"].defaults["beta"]))  # 0.1
# What a shipped recipe may set on the run besides the job's own hyperparameters.
RECIPE_SPEC_FIELDS = ("method", "quantization", "r", "lora_alpha", "lora_dropout", "lr_scheduler_type",
                      "warmup_ratio", "max_seq_length", "target_modules")  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """The numbers a job trains with (OpenAI's names) and the RunSpec fields they become."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    base_learning_rate: float
    beta: float | None = None  # DPO only
    spec: dict[str, Any] = field(default_factory=dict)  # LoRA rank and the rest, for the RunSpec

    @property
    def learning_rate(self) -> float:
        return self.base_learning_rate * self.learning_rate_multiplier

    def hyperparameters(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
            "n_epochs": self.n_epochs,
        }
        if self.beta is not None:
            values["beta"] = self.beta
        return values

    def steps_per_epoch(self, rows: int) -> int:
        return max(1, math.ceil(max(rows, 1) / self.batch_size))

    def max_steps(self, rows: int) -> int:
        """Optimizer steps for `n_epochs` passes over `rows` rows (the run's progress and ETA count them)."""
        return max(1, math.ceil(max(rows, 1) * self.n_epochs / self.batch_size))


def shipped_recipe(base_model: str) -> dict[str, Any]:
    """The recipe a local base model ships in `recipe.json` ({} when none, or when it cannot be read): its
    `sft` and `dpo` sections hold n_epochs, batch_size, learning_rate (and beta), and RunSpec fields."""
    path = Path(base_model) / RECIPE_FILE
    if not path.is_absolute():  # a hub id: resolve_base gives local models as absolute paths
        return {}
    try:
        if not path.is_file() or path.stat().st_size > RECIPE_MAX_BYTES:
            return {}
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def base_learning_rate(base_model: str, method: str) -> float:
    """The learning rate a multiplier of 1 means for this base and method."""
    section = _section(base_model, method)
    rate = section.get("learning_rate")
    if isinstance(rate, int | float) and 0 < rate <= 1:
        return float(rate)
    return DPO_LEARNING_RATE if method == "dpo" else SFT_LEARNING_RATE


def choose(*, base_model: str, method: str, rows: int, asked: dict[str, Any]) -> Recipe:
    """The recipe for a job: `asked` holds the job's hyperparameters, numbers or "auto" (or absent)."""
    section = _section(base_model, method)
    epochs = _number(asked.get("n_epochs")) or _number(section.get("n_epochs")) or general_epochs(rows)
    batch = _number(asked.get("batch_size")) or _number(section.get("batch_size")) or general_batch_size(rows)
    multiplier = _number(asked.get("learning_rate_multiplier")) or 1.0
    beta = None
    if method == "dpo":
        beta = _number(asked.get("beta")) or _number(section.get("beta")) or DPO_BETA
    spec = {name: section[name] for name in RECIPE_SPEC_FIELDS if name in section}
    if "r" not in spec:
        rank = 8 if rows < 1_000 else 16
        spec |= {"r": rank, "lora_alpha": 2 * rank}
    return Recipe(
        n_epochs=int(epochs),
        batch_size=int(batch),
        learning_rate_multiplier=float(multiplier),
        base_learning_rate=base_learning_rate(base_model, method),
        beta=float(beta) if beta is not None else None,
        spec=spec,
    )


def general_epochs(rows: int) -> int:
    """About 3 passes; more for a small file (up to MAX_EPOCHS), fewer for a large one, as OpenAI's auto does."""
    rows = max(rows, 1)
    if rows * DEFAULT_EPOCHS < MIN_EXAMPLES:
        return min(MAX_EPOCHS, math.ceil(MIN_EXAMPLES / rows))
    if rows * DEFAULT_EPOCHS > MAX_EXAMPLES:
        return max(1, MAX_EXAMPLES // rows)
    return DEFAULT_EPOCHS


def general_batch_size(rows: int) -> int:
    """About 0.2% of the rows (OpenAI's auto), a power of two from 4 (below, steps get noisy and slow for little
    gain) to 32."""
    return max(4, min(32, 2 ** round(math.log2(max(rows * 0.002, 1)))))


def _section(base_model: str, method: str) -> dict[str, Any]:
    section = shipped_recipe(base_model).get("dpo" if method == "dpo" else "sft")
    return section if isinstance(section, dict) else {}


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else None
