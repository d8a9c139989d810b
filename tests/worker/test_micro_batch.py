"""The micro-batch (worker.engine.micro_batch): the pass size chosen against the GPU's memory, and a pass that
runs out of GPU memory redone in halves with the run going on and its losses unchanged.

This machine has no GPU: running out of its memory is brought about by a forward hook that raises torch's
OutOfMemoryError for passes of more rows than a GPU would hold, on real training steps of the tiny model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from peft import PeftModel

from app.config import get_settings
from app.rundir import RunDir
from tests.worker.conftest import run_spec
from worker.engine.micro_batch import MicroBatch, OomSplitter, choose, fits_by_estimate, split
from worker.engine.steps import build_trainer, prepare_training


def test_auto_takes_the_largest_divisor_of_the_step_that_fits() -> None:
    fits = fits_by_estimate(fixed_bytes=1000, bytes_per_example=100, budget=1650)  # 6 examples fit, 7 do not
    chosen = choose(batch=4, accumulation=3, asked="auto", fits=fits, where="")
    assert (chosen.size, chosen.accumulation) == (6, 2)  # 12 examples a step: 6 x 2, not 4 x 3
    assert "6 of 12" in chosen.reason
    everything = choose(batch=4, accumulation=3, asked="auto", fits=lambda size: True, where="")
    assert (everything.size, everything.accumulation) == (12, 1)
    nothing = choose(batch=4, accumulation=3, asked="auto", fits=lambda size: False, where="")
    assert (nothing.size, nothing.accumulation) == (1, 12) and "gradient_checkpointing" in nothing.reason


def test_without_a_gpu_auto_keeps_the_batch_as_set_and_a_number_is_used_as_it_is() -> None:
    cpu = choose(batch=4, accumulation=3, asked="auto", fits=None, where="on the CPU")
    assert cpu == MicroBatch(4, 3, "on the CPU: the batch as set (4 x 3)")
    assert (choose(batch=4, accumulation=3, asked=2, fits=None, where="").accumulation) == 6


def test_a_split_batch_keeps_every_row_once() -> None:
    labels = torch.arange(10).reshape(5, 2)
    inputs = {"input_ids": torch.arange(10).reshape(5, 2), "labels": labels, "n": None}
    parts = split(inputs, 2)
    assert sorted(len(part["input_ids"]) for part in parts) == [2, 3]
    assert torch.equal(torch.cat([part["labels"] for part in parts]), labels)
    assert all(part["n"] is None for part in parts)


def _train(
    tmp_name: str,
    *,
    most_rows: int | None = None,
    failing: set[int] = frozenset(),  # type: ignore[assignment]
) -> tuple[list[float], dict[str, torch.Tensor], list[Any]]:
    """Three steps of 8 examples; a pass of more than `most_rows` rows, and the forward passes numbered in
    `failing` (1 the first), run out of (pretend) GPU memory."""
    spec = run_spec(max_steps=3, per_device_train_batch_size=8, lora_dropout=0.0, learning_rate=5e-3,
                    max_seq_length=64, eval_split=0.0, eval_dataset="")  # fmt: skip
    setup = prepare_training(spec, RunDir.of(tmp_name, get_settings()))
    trainer = build_trainer(setup, spec)
    splits: list[Any] = []
    OomSplitter(trainer, on_split=lambda rows, parts: splits.append((rows, parts)))
    calls = [0]

    def too_big(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        calls[0] += 1
        rows = kwargs["input_ids"].shape[0]
        if calls[0] in failing or (most_rows is not None and rows > most_rows):
            raise torch.OutOfMemoryError(f"CUDA out of memory (pass {calls[0]}, {rows} rows)")

    setup.model.register_forward_pre_hook(too_big, with_kwargs=True)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    model: PeftModel = setup.model
    weights = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return losses, weights, splits


def test_a_pass_that_runs_out_of_memory_is_redone_in_halves_and_the_run_goes_on(loradeck_env: dict[str, str]) -> None:
    whole_losses, whole_weights, none = _train("whole")
    # Pass 1 (8 rows) fails: halves. Pass 2 (rows 1-4) trains, pass 3 (rows 5-8) fails: the first half's
    # gradients are taken back and the step is redone in quarters, 2 rows a pass from then on.
    split_losses, split_weights, splits = _train("halved", failing={1, 3})
    assert none == [] and splits == [(8, 2), (8, 4)]
    assert len(split_losses) == len(whole_losses) == 3
    assert split_losses == pytest.approx(whole_losses, rel=1e-5, abs=1e-6)
    # Adapters equivalent: AdamW divides by the gradients' root mean square, so the sums' float order (halves
    # added after, not within, the pass) moves a weight by up to 1e-5, against 3 steps' updates of ~1.5e-2.
    for name, weight in whole_weights.items():
        assert torch.allclose(split_weights[name], weight, rtol=0, atol=5e-5), name


def test_one_row_that_does_not_fit_still_fails_the_run(loradeck_env: dict[str, str]) -> None:
    with pytest.raises(torch.OutOfMemoryError):
        _train("hopeless", most_rows=0)
