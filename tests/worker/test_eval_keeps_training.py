"""Evaluating during training does not change what is trained: the same run with and without evaluations takes
the same batches in every epoch, so its training losses and its adapter are the same."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from app.config import get_settings
from app.models import RunStatus
from tests.conftest import QUICK_RUN
from tests.worker.conftest import TRAIN, run_spec, train_points, train_run


def test_a_run_with_evaluations_trains_the_same_batches_as_without(
    loradeck_env: dict[str, str], tmp_path: Path
) -> None:
    # 8 rows of 2: an epoch is 4 steps, and each evaluation falls before an epoch's rows are shuffled.
    rows = TRAIN.read_text(encoding="utf-8").splitlines()
    train, held_out = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("\n".join(rows[:8]) + "\n", encoding="utf-8")
    held_out.write_text("\n".join(rows[8:12]) + "\n", encoding="utf-8")
    common = QUICK_RUN | {"dataset": str(train), "eval_dataset": str(held_out), "max_steps": 12, "method": "lora"}
    runs = {every: train_run(run_spec(common, eval_steps=every)) for every in (0, 2)}
    assert all(run.status == RunStatus.succeeded for run in runs.values()), [r.error for r in runs.values()]
    losses = {every: [point.loss for point in train_points(run.id)] for every, run in runs.items()}
    assert losses[2] == losses[0]  # every step, past the first epoch too

    def weights(run_id: str) -> dict[str, torch.Tensor]:
        return load_file(str(get_settings().runs_dir / run_id / "adapter" / "adapter_model.safetensors"))

    evaluated, plain = weights(runs[2].id), weights(runs[0].id)
    assert evaluated.keys() == plain.keys()
    assert all(torch.equal(evaluated[name], plain[name]) for name in plain)


def test_an_evaluation_forward_leaves_a_qlora_models_training_numbers_alone(loradeck_env: dict[str, str]) -> None:
    from app.web.forms import form_defaults
    from worker.engine.steps import apply_adapter, load_model, load_tokenizer

    spec = run_spec(form_defaults(), save_steps=0)  # the form's QLoRA run on the sample
    tokenizer = load_tokenizer(spec)
    model = apply_adapter(load_model(spec), spec)
    batch = tokenizer(TRAIN.read_text(encoding="utf-8").splitlines()[:4], return_tensors="pt", padding=True)

    def train_loss() -> float:
        model.train()
        return float(model(**batch, labels=batch["input_ids"]).loss.item())

    before = train_loss()
    model.eval()
    with torch.no_grad():  # as Trainer evaluates
        model(**tokenizer(["解析地址：臺北市大安區仁愛路四段27號\n"], return_tensors="pt"))
    assert train_loss() == before
