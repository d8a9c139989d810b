"""What a run trains on and how well it uses it: the device, its peak FLOPS and the model's FLOPs per token,
recorded once as training begins (Run.hardware), then MFU and GPU memory beside each metric point.

The arithmetic is worker.engine.flops's (torch-free, shared with the GPU benchmark); this module reads what it
needs from torch and the trainer: the device's name, the model's config and trainable parameters, the training
rows' mean length, and the CUDA allocator's counters.
"""

from __future__ import annotations

import logging
from collections.abc import Sized
from typing import Any

import torch

from worker.engine import flops

log = logging.getLogger(__name__)

# Rows read for the mean row length: evenly spread, so a sorted dataset is measured whole; ~1 ms for 512
# TokenizedDataset rows (a list lookup each), next to seconds of model loading.
SAMPLED_ROWS = 512


def _ids(row: dict[str, Any], name: str) -> list[int] | None:
    # TRL names a tokenized column `<name>_ids` (DPO, KTO) or, in its older trainers (ORPO), `<name>_input_ids`.
    found = row.get(f"{name}_ids", row.get(f"{name}_input_ids"))
    return found if isinstance(found, list) else None


def row_tokens(row: Any) -> float | None:
    """Tokens one training row puts through the model: input_ids for SFT; a preference pair's prompt and the
    mean of its two answers (each answer is its own row, prompt included); a KTO row's prompt and completion;
    None for a row of another shape (GRPO's prompts are text: it writes the rest while training)."""
    if not isinstance(row, dict):
        return None
    if "input_ids" in row:
        return float(len(row["input_ids"]))
    prompt, chosen, rejected, completion = (_ids(row, name) for name in ("prompt", "chosen", "rejected", "completion"))
    if chosen is not None and rejected is not None:
        return len(prompt or []) + (len(chosen) + len(rejected)) / 2
    if completion is not None:
        return float(len(prompt or []) + len(completion))
    return None


def mean_row_tokens(dataset: Any, limit: int = SAMPLED_ROWS) -> float | None:
    """The training rows' mean length in tokens, from at most `limit` rows spread over the dataset; None where
    the dataset cannot be indexed (a stream) or its rows are of a shape row_tokens does not know."""
    if dataset is None or not isinstance(dataset, Sized) or not hasattr(dataset, "__getitem__"):
        return None
    count = len(dataset)
    if count == 0:
        return None
    picks = sorted({i * count // min(count, limit) for i in range(min(count, limit))})
    lengths: list[float] = []
    for index in picks:
        length = row_tokens(dataset[index])
        if length is None:
            return None
        lengths.append(length)
    return sum(lengths) / len(lengths)


def model_device(model: Any) -> torch.device:
    """Where the model's weights are (its first parameter's device; the CPU for no model)."""
    parameter = next(iter(model.parameters()), None) if model is not None else None
    return parameter.device if parameter is not None else torch.device("cpu")


def device_name(where: torch.device) -> str:
    """The GPU's marketing name (torch.cuda.get_device_name: "NVIDIA H100 80GB HBM3"), or the device type
    ("cpu", "mps")."""
    return str(torch.cuda.get_device_name(where)) if where.type == "cuda" else str(where.type)


def no_mfu(peak: float | None, shapes: dict[str, Any] | None, tokens: float | None) -> str | None:
    """What MFU needs that this run lacks, in the run page's words ("MFU: needs a known GPU"); None: it has MFU."""
    if peak is None:
        return "needs a known GPU"  # the CPU, or a GPU not in worker.engine.flops.PEAK_BF16_FLOPS
    if shapes is None:
        return "needs a dense model's shape"  # experts, or a config without Llama-style names
    if tokens is None:
        return "needs tokenized training rows"  # rows generated while training (GRPO), or a streamed dataset
    return None


class Throughput:
    """The run's hardware, figured once at train begin, and each metric point's MFU and GPU memory from it."""

    def __init__(self) -> None:
        self.flops_per_token: float | None = None
        self.peak: float | None = None
        self.gpus = 1
        self.cuda: torch.device | None = None  # the GPU trained on (rank 0's in a multi-GPU run)

    def begin(self, model: Any, dataset: Any, world_size: int) -> dict[str, Any]:
        """Run.hardware: {"device", "peak_flops", "flops_per_token", "gpus", "mean_row_tokens", "no_mfu"}. A figure
        that cannot be had is None, and `no_mfu` says what MFU needs then (the run page shows it); nothing here
        stops training."""
        where = model_device(model)
        device = device_name(where)
        self.cuda = where if where.type == "cuda" else None
        self.gpus = max(1, int(world_size)) if self.cuda else 1
        self.peak = flops.peak_flops(device) if self.cuda else None
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.cuda)  # this training's peak, not earlier runs' in the process
        config = getattr(model, "config", None)
        shapes = flops.dense_shapes(config.to_dict()) if config is not None else None
        tokens = mean_row_tokens(dataset)
        self.flops_per_token = None
        if shapes is not None and tokens is not None:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            self.flops_per_token = flops.flops_per_token(shapes, tokens, trainable=trainable)
        return {
            "device": device,
            "peak_flops": self.peak,
            "flops_per_token": self.flops_per_token,
            "gpus": self.gpus,
            "mean_row_tokens": round(tokens, 1) if tokens is not None else None,
            "no_mfu": no_mfu(self.peak, shapes, tokens),
        }

    def figures(self, tokens_per_sec: float | None) -> dict[str, Any]:
        """A point's MFU (train points, from their tokens/s) and the GPU memory allocated now and at most since
        training began (torch.cuda.memory_allocated / max_memory_allocated: host-side counters, no sync)."""
        share = flops.mfu(tokens_per_sec, self.flops_per_token, self.peak, self.gpus)
        share = round(share, 5) if share is not None else None  # 0.001 of a percent: more is noise
        if self.cuda is None:
            return {"mfu": share, "gpu_memory_bytes": None, "gpu_peak_bytes": None}
        return {
            "mfu": share,
            "gpu_memory_bytes": int(torch.cuda.memory_allocated(self.cuda)),
            "gpu_peak_bytes": int(torch.cuda.max_memory_allocated(self.cuda)),
        }
