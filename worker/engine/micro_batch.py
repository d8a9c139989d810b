"""The micro-batch: how many examples one forward/backward pass takes, apart from the batch the user asked for.

`per_device_train_batch_size x gradient_accumulation_steps` is the batch of one optimizer step (per device), as
the user set it. With `micro_batch_size` "auto" on a GPU, each pass takes the largest divisor of that batch that
fits the GPU's free memory by the pre-flight estimate (worker.engine.estimate), and gradient accumulation makes
up the rest: fewer, fuller passes where memory allows (a GPU runs a batch of 8 about as fast as one of 1), the
same examples in each optimizer step, the same losses. If a pass still runs out of memory, `OomSplitter` splits
it in halves, redoes it, and keeps the smaller pass for the rest of the run: the run goes on, not fails.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MicroBatch:
    """One pass's examples and the passes per optimizer step, with why (shown on the run page)."""

    size: int
    accumulation: int
    reason: str


def divisors_down(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def choose(
    *, batch: int, accumulation: int, asked: int | str, fits: Callable[[int], bool] | None, where: str, least: int = 1
) -> MicroBatch:
    """The micro-batch for an optimizer step of `batch x accumulation` examples. `asked`: the spec's
    micro_batch_size (a number, used as it is; or "auto"). `fits(n)`: whether passes of n examples fit the
    device's memory; None where nothing is to be fitted (`where` says why, e.g. on the CPU). `least`: the fewest
    examples a pass of the objective may take (KTO's KL term pairs rows of one pass)."""
    step = batch * accumulation
    if asked != "auto":
        size = int(asked)
        return MicroBatch(size, step // size, f"{size} examples a pass, as set ({step // size} passes a step)")
    if fits is None:
        return MicroBatch(batch, accumulation, f"{where}: the batch as set ({batch} x {accumulation})")
    for size in divisors_down(step):
        if size >= least and fits(size):
            passes = step // size
            return MicroBatch(size, passes, f"the largest pass that fits the GPU: {size} of {step} examples "
                              f"({passes} pass{'es' if passes > 1 else ''} a step)")  # fmt: skip
    size = min(d for d in divisors_down(step) if d >= least) if step >= least else step
    return MicroBatch(size, step // size, f"even {size} example{'s' if size > 1 else ''} a pass exceed the GPU's "
                      f"free memory by the estimate; trying {size} ({step // size} passes a step): turn on "
                      "gradient_checkpointing or quantize if it fails")  # fmt: skip


def fits_by_estimate(fixed_bytes: int, bytes_per_example: float, budget: int) -> Callable[[int], bool]:
    """`fits(n)` from an estimate: what does not grow with the batch (weights, adapter, its gradients and
    optimizer states) plus n examples' activations, against the budget."""
    return lambda size: fixed_bytes + size * bytes_per_example <= budget


def batch_rows(inputs: dict[str, Any]) -> int:
    rows = {value.shape[0] for value in inputs.values() if isinstance(value, torch.Tensor) and value.dim() > 0}
    return rows.pop() if len(rows) == 1 else 0  # 0: no one batch dimension to split along


def split(inputs: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """The batch as `parts` smaller ones of rows as equal as can be (the tensors with the batch's rows split along
    them, everything else given to each)."""
    rows = batch_rows(inputs)
    bounds = [round(rows * k / parts) for k in range(parts + 1)]
    return [
        {
            name: value[start:end] if isinstance(value, torch.Tensor) and value.dim() > 0 else value
            for name, value in inputs.items()
        }
        for start, end in zip(bounds, bounds[1:], strict=False)
        if end > start
    ]


class OomSplitter:
    """Trainer.training_step that survives running out of GPU memory: the pass is redone in halves (then
    quarters, ...; never below `least` examples a part) and the run keeps the smaller parts from then on. The
    gradients of the optimizer step's earlier passes are kept aside before each pass and put back before a redo, so
    nothing is counted twice.

    A loss normalised by the step's item count (`num_items_in_batch`: transformers' token-summed causal LM loss)
    adds up over the parts as it is; a loss averaged over its own rows (TRL's preference losses) is weighted by
    each part's share of the rows, which gives the whole pass's mean. One-GPU runs only: a rank that redid a pass
    alone would leave the others waiting in their all-reduce (worker.engine.steps installs it so)."""

    def __init__(
        self, trainer: Trainer, on_split: Callable[[int, int], None] = lambda rows, parts: None, least: int = 1
    ) -> None:
        self.trainer = trainer
        self.step = trainer.training_step
        self.parts = 1
        self.least = least
        self.on_split = on_split
        trainer.training_step = self  # type: ignore[method-assign]

    def __call__(self, model: torch.nn.Module, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        rows = batch_rows(inputs) if isinstance(inputs, dict) else 0
        if rows == 0:  # nothing to split along (a list of prompts, one flattened packed row): as it is
            return self.step(model, inputs, num_items_in_batch)  # type: ignore[no-any-return]
        while True:
            kept = self._gradients()
            try:
                return self._passes(model, inputs, num_items_in_batch)
            except torch.OutOfMemoryError:
                parts = min(self.parts * 2, rows // self.least)
                if parts <= self.parts:
                    raise  # the fewest examples a pass may take already: nothing left to split
            # Out of the except: its traceback held the failed pass's activations, which are free to go now.
            self._restore(kept)
            self.parts = parts
            gc.collect()
            torch.cuda.empty_cache()
            log.warning("out of GPU memory on a pass of %d examples: each pass now takes %d of them",
                        rows, -(-rows // self.parts))  # fmt: skip
            self.on_split(rows, self.parts)

    def _passes(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any) -> torch.Tensor:
        if self.parts == 1:
            return self.step(model, inputs, num_items_in_batch)  # type: ignore[no-any-return]
        rows = batch_rows(inputs)
        scaled = self._scaled_by_items(num_items_in_batch)
        trainer = self.trainer
        accumulation = trainer.current_gradient_accumulation_steps
        losses = []
        try:
            for chunk in split(inputs, self.parts):
                if not scaled:  # Trainer divides the part's mean by this: the part's share of the pass's mean
                    share = accumulation * rows / batch_rows(chunk)  # a float: Trainer only divides by it
                    trainer.current_gradient_accumulation_steps = share  # type: ignore[assignment]
                losses.append(self.step(model, chunk, num_items_in_batch))
        finally:
            trainer.current_gradient_accumulation_steps = accumulation
        return torch.stack(losses).sum()  # each part's loss is already its share of the pass's

    def _scaled_by_items(self, num_items_in_batch: Any) -> bool:
        trainer = self.trainer
        if trainer.loss_is_scaled_for_ga is not None:
            return bool(trainer.loss_is_scaled_for_ga)
        return bool(trainer.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
            trainer.compute_loss_func is not None
        )

    def _gradients(self) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """The gradients the step's earlier passes left (none on its first pass: Trainer sets them to None)."""
        model = self.trainer.model
        assert model is not None
        return [(p, p.grad.detach().clone()) for p in model.parameters() if p.requires_grad and p.grad is not None]

    def _restore(self, kept: list[tuple[torch.nn.Parameter, torch.Tensor]]) -> None:
        model = self.trainer.model
        assert model is not None
        for param in model.parameters():
            param.grad = None
        for param, grad in kept:
            param.grad = grad
