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

GIB = 1024**3
# Held back from the free memory the estimate may fill: the estimate leaves out the CUDA context's workspace
# (cuBLAS, ~0.5 GiB) and the caching allocator's fragmentation (estimate.py's notes).
RESERVED_BYTES = GIB // 2
FILL = 0.9


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


def gpu_budget_bytes() -> int | None:
    """Bytes the estimate may fill on this process's GPU; None without one."""
    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return max(0, int(free * FILL) - RESERVED_BYTES)


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
    quarters, ...) and the run keeps the smaller pass from then on. The gradients of the optimizer step's earlier
    passes are kept aside before each pass and put back before a redo, so nothing is counted twice.

    A loss normalised by the step's item count (`num_items_in_batch`: transformers' token-summed causal LM loss)
    adds up over the parts as it is; a loss averaged over its own rows (TRL's preference losses) is divided by
    the parts as well, which is the same mean for parts of equal rows."""

    def __init__(self, trainer: Trainer, on_split: Callable[[int, int], None] = lambda rows, parts: None) -> None:
        self.trainer = trainer
        self.step = trainer.training_step
        self.parts = 1
        self.on_split = on_split
        trainer.training_step = self  # type: ignore[method-assign]

    def __call__(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        while True:
            kept = self._gradients()
            try:
                return self._passes(model, inputs, num_items_in_batch)
            except torch.OutOfMemoryError:
                rows = batch_rows(inputs)
                if self.parts * 2 > rows:
                    raise  # one example a pass already: nothing left to halve
                self._restore(kept)
                self.parts *= 2
                gc.collect()
                torch.cuda.empty_cache()
                log.warning("out of GPU memory on a pass of %d examples: each pass now takes %d of them",
                            rows, -(-rows // self.parts))  # fmt: skip
                self.on_split(rows, self.parts)

    def _passes(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any) -> torch.Tensor:
        if self.parts == 1:
            return self.step(model, inputs, num_items_in_batch)  # type: ignore[no-any-return]
        chunks = split(inputs, self.parts)
        scaled = self._scaled_by_items(num_items_in_batch)
        trainer = self.trainer
        accumulation = trainer.current_gradient_accumulation_steps
        if not scaled:
            trainer.current_gradient_accumulation_steps = accumulation * len(chunks)
        try:
            losses = [self.step(model, chunk, num_items_in_batch) for chunk in chunks]
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

    def _gradients(self) -> list[tuple[torch.nn.Parameter, torch.Tensor | None]]:
        model = self.trainer.model
        assert model is not None
        params = (p for p in model.parameters() if p.requires_grad)
        return [(p, None if p.grad is None else p.grad.detach().clone()) for p in params]

    @staticmethod
    def _restore(kept: list[tuple[torch.nn.Parameter, torch.Tensor | None]]) -> None:
        for param, grad in kept:
            param.grad = grad
