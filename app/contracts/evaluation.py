"""A run's evaluation after training (`runs.evaluation`): base and adapter on the eval rows and the regression
prompts, and for a preference objective on the eval pairs. The worker writes it (worker.engine.evaluate), the run
page and the API read it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Stored(BaseModel):
    # Read back from the database: an evaluation stored by an older version may carry keys this one dropped.
    model_config = ConfigDict(extra="ignore")


class TaskScore(_Stored):
    rows: int
    exact_match: float = Field(description="Share of rows answered exactly.")
    field_accuracy: float | None = Field(default=None, description="JSON answers: share of fields right.")


class TaskScores(_Stored):
    base: TaskScore
    adapter: TaskScore


class PreferenceScore(_Stored):
    """One side (base or starting adapter, or the trained adapter) on the held-out pairs."""

    rows: int = Field(description="Eval pairs scored.")
    accuracy: float = Field(
        description="Share of pairs whose chosen answer is likelier than the rejected one (summed log-probability "
        "of the answer's tokens after the prompt)."
    )
    margin: float = Field(description="Mean of log p(chosen) - log p(rejected) over the pairs, in nats.")


class PreferenceScores(_Stored):
    base: PreferenceScore = Field(description="The base model, or the starting adapter for a continued run.")
    adapter: PreferenceScore


class RewardScore(_Stored):
    """One side (base or starting adapter, or the trained adapter) scored by the run's rewards (GRPO)."""

    rows: int = Field(description="Eval prompts answered.")
    greedy: float = Field(description="Mean weighted reward of the greedy answers.")
    sampled: float | None = Field(default=None, description="Mean weighted reward sampled at the run's temperature.")
    functions: dict[str, float] = Field(default_factory=dict, description="Each reward's mean on the greedy answers.")


class RewardScores(_Stored):
    base: RewardScore = Field(description="The base model, or the starting adapter for a continued run.")
    adapter: RewardScore


class Example(_Stored):
    prompt: str
    expected: str
    base: str
    adapter: str


class RegressionAnswer(_Stored):
    prompt: str
    base: str
    adapter: str


class EvaluatedBase(_Stored):
    """The base the answers were given on: for a run trained on a quantized copy, the full-precision base
    the merged download uses (or, where it did not fit, the quantized one, with a note)."""

    label: str
    dtype: str
    quantization: str
    trained_quantization: str | None = None
    note: str | None = None


class Progress(_Stored):
    done: int
    total: int


class Evaluation(_Stored):
    base: EvaluatedBase | None = None
    task: TaskScores | None = None
    task_skipped: str | None = Field(default=None, description="Why there are no task metrics.")
    preference: PreferenceScores | None = Field(default=None, description="Preference objectives: the eval pairs.")
    preference_skipped: str | None = Field(default=None, description="Why a preference run has no pair scores.")
    reward: RewardScores | None = Field(default=None, description="GRPO: the eval prompts scored by its rewards.")
    reward_skipped: str | None = Field(default=None, description="Why a GRPO run has no reward scores.")
    starting_run: str | None = Field(
        default=None, description="A continued run: its base side is this run's adapter, not the bare base."
    )
    examples: list[Example] = Field(default_factory=list)
    regression: list[RegressionAnswer] = Field(default_factory=list)
    seconds: float | None = None
    error: str | None = Field(default=None, description="Why the evaluation failed (the adapter is saved).")
    progress: Progress | None = Field(default=None, description="While it runs: rows answered so far.")

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


def evaluation_of(stored: dict[str, Any] | None) -> Evaluation | None:
    """The stored evaluation, typed; None where the run has none."""
    return Evaluation.model_validate(stored) if stored else None
