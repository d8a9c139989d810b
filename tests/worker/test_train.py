"""Real QLoRA runs of the tiny model, in-process: what a user checks on the run page and on disk."""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from sqlalchemy import event as sqlalchemy_event
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from app import runs
from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR, get_settings
from app.db import get_engine, get_sessionmaker
from app.models import ArtifactKind, ArtifactStatus, RunStatus
from app.processes import free_port
from app.services import runs as runs_service
from tests.worker.conftest import TRAIN, adapter_logit_change, create_run, read_events, read_run, train_in_thread
from worker.engine import callbacks
from worker.engine.train import run_training

EVAL = SAMPLE_DATASET_DIR / "eval.jsonl"


# This module's runs, unless a test says otherwise (on top of tests/worker/conftest.py's `run_spec`).
QLORA = {
    "method": "qlora",
    "max_steps": 15,
    "per_device_train_batch_size": 4,
    "learning_rate": 2e-3,
    "max_seq_length": 128,
}


def _stock_qlora_counts() -> tuple[int, int]:
    """Trainable and all parameters of the default QLoRA setup, built with stock transformers + peft."""
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    base = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, quantization_config=quantization, device_map="cpu")
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(base, config).get_nb_trainable_parameters()


def test_qlora_run_trains_and_saves_a_loadable_adapter(loradeck_env: dict[str, str], tmp_path: Path) -> None:
    # The tiny base already knows the address format and house numbers are random digits, so on the full
    # sample set 15 steps barely move the loss. Eight rows in one full batch: the run must learn them.
    dataset = tmp_path / "eight.jsonl"
    dataset.write_text("\n".join(TRAIN.read_text(encoding="utf-8").splitlines()[:8]) + "\n", encoding="utf-8")
    # eval_steps 0: one eval pass, at the end (tests/app/test_eval_during_training.py has evaluations over a run).
    run_id = create_run(
        QLORA, dataset=str(dataset), eval_dataset=str(EVAL), eval_steps=0, per_device_train_batch_size=8
    )

    run_training(run_id)

    run = read_run(run_id)
    assert run.status == RunStatus.succeeded, run.error
    assert run.error is None and run.finished_at is not None and run.step == 15

    trainable, total = _stock_qlora_counts()
    assert (run.params_trainable, run.params_all) == (trainable, total)

    with get_sessionmaker()() as session:
        points = runs.list_metrics(session=session, run_id=run_id)
        artifacts = runs.list_artifacts(session=session, run_id=run_id)
    train = [point for point in points if point.kind == "train"]
    steps = [point.step for point in train]
    assert steps == sorted(set(steps)) and steps[-1] == 15
    assert all(point.loss is not None and point.tokens_seen and point.tokens_per_sec for point in train)
    first, last = sum(p.loss for p in train[:3]) / 3, sum(p.loss for p in train[-3:]) / 3
    assert last < first, f"loss did not go down: {first:.3f} -> {last:.3f}"
    (evaluated,) = [point for point in points if point.kind == "eval"]
    # Beside the eval loss, the share of the eval answers' tokens the 4-bit model predicts right.
    assert evaluated.step == 15 and evaluated.token_accuracy is not None and 0.0 < evaluated.token_accuracy < 1.0

    kinds = [kind for kind, _ in read_events(run_id)]
    # running; the fast paths as the worker chose them (worker.engine.fastpaths), a log event; the counts
    assert kinds[:3] == ["status", "log", "params"] and kinds[-3:] == ["evaluation", "status", "done"]
    # The adapter is saved (and offered) before base and adapter answer the eval rows, which report progress.
    after_adapter = kinds[kinds.index("artifact") + 1 : -3]
    assert after_adapter and set(after_adapter) == {"evaluating"}
    assert kinds.count("metric") == len(points)
    data = dict(read_events(run_id))
    assert data["params"] == {
        "all": total,
        "trainable": trainable,
        "percent": pytest.approx(100 * trainable / total),
    }
    assert data["done"] == {"status": "succeeded"}

    run_dir = get_settings().runs_dir / run_id
    assert json.loads((run_dir / "spec.json").read_text())["max_steps"] == 15
    assert "succeeded" in (run_dir / "train.log").read_text()

    (adapter,) = artifacts
    assert (adapter.kind, adapter.status, adapter.path) == (
        ArtifactKind.adapter,
        ArtifactStatus.ready,
        f"{run_id}/adapter",
    )
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {f["name"] for f in adapter.files}
    assert data["artifact"]["id"] == adapter.id and data["artifact"]["sha256"] == adapter.sha256

    assert adapter_logit_change(get_settings().runs_dir / adapter.path) > 1e-4


def test_a_run_another_worker_claimed_is_left_alone(loradeck_env: dict[str, str]) -> None:
    run_id = create_run(QLORA)
    with get_sessionmaker()() as session:
        assert runs.claim_run(session=session, run_id=run_id, worker="gpu-box-2:4242")

    run_training(run_id)

    run = read_run(run_id)
    assert (run.status, run.worker, run.step) == (RunStatus.running, "gpu-box-2:4242", 0)
    assert not (get_settings().runs_dir / run_id).exists()
    assert read_events(run_id) == []


def test_cancel_stops_a_running_run_at_the_next_step(loradeck_env: dict[str, str]) -> None:
    run_id = create_run(QLORA, max_steps=10_000)
    worker = train_in_thread(run_id, until_step=1)

    with get_sessionmaker()() as session:
        runs_service.cancel_run(session=session, run_id=run_id)
    worker.join(timeout=60)

    run = read_run(run_id)
    assert not worker.is_alive()
    assert run.status == RunStatus.cancelled and run.step < 10_000
    assert dict(read_events(run_id))["done"] == {"status": "cancelled"}
    with get_sessionmaker()() as session:
        assert runs.list_artifacts(session=session, run_id=run_id) == []


def test_steps_touch_no_database_and_a_cancel_lands_at_the_end_of_the_step_in_progress(
    loradeck_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel flag reaches the trainer from the control thread, told through Redis: the training thread sends
    the database no statement while it steps (no per-step read of the flags, no metric write in on_log), the
    control thread reads the flags when told and every FLAGS_FALLBACK_S besides (not each beat), and a cancel
    requested mid-run ends the run `cancelled` at the end of the step in progress."""
    run_id = create_run(QLORA, max_steps=10_000)
    in_hooks: list[str] = []  # statements the training thread sent from inside on_step_end or on_log
    hooked: set[int] = set()  # the threads now inside one of those hooks
    ends: dict[int, float] = {}  # step -> when its on_step_end ran
    flag_reads: list[float] = []  # when the flags were read

    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if threading.get_ident() in hooked:
            in_hooks.append(sql)
        if "stop_requested" in sql and sql.lstrip().upper().startswith("SELECT"):
            flag_reads.append(time.monotonic())

    def timed(hook: Any) -> Any:
        def wrapper(self: Any, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            hooked.add(threading.get_ident())
            try:
                return hook(self, args, state, control, **kwargs)
            finally:
                hooked.discard(threading.get_ident())
                if hook is original_step_end:
                    ends[state.global_step] = time.monotonic()

        return wrapper

    original_step_end = callbacks.MetricsCallback.on_step_end
    monkeypatch.setattr(callbacks.MetricsCallback, "on_step_end", timed(original_step_end))
    monkeypatch.setattr(callbacks.MetricsCallback, "on_log", timed(callbacks.MetricsCallback.on_log))
    sqlalchemy_event.listen(get_engine(), "before_cursor_execute", statement)
    try:
        worker = threading.Thread(target=run_training, args=(run_id,))
        worker.start()
        deadline = time.monotonic() + 120
        started = time.monotonic()
        while len(ends) < 6 or time.monotonic() - started < 6:  # some steps, and a fallback read
            assert worker.is_alive() and time.monotonic() < deadline, read_run(run_id).error
            time.sleep(0.02)
        reads_before = len(flag_reads)
        trained_s = time.monotonic() - started
        with get_sessionmaker()() as session:
            runs_service.cancel_run(session=session, run_id=run_id)
        asked = time.monotonic()
        worker.join(timeout=60)
    finally:
        sqlalchemy_event.remove(get_engine(), "before_cursor_execute", statement)

    run = read_run(run_id)
    assert not worker.is_alive()
    assert run.status == RunStatus.cancelled, run.error
    assert in_hooks == [], in_hooks[:3]
    last = max(ends)
    assert run.step == last
    step_s = statistics.median(b - a for a, b in zip(sorted(ends.values()), sorted(ends.values())[1:], strict=False))
    # Told at once, the control thread reads the flag; the step in progress then ends (a second of slack for a
    # loaded machine: the beat-driven read took up to CONTROL_EVERY_S more).
    assert ends[last] - asked <= 2 * step_s + 1.0, (ends[last] - asked, step_s)
    # Before the cancel: the first read, then one every FLAGS_FALLBACK_S, not one a beat (12 or more by then).
    assert 1 <= reads_before <= 2 + trained_s / callbacks.FLAGS_FALLBACK_S, (reads_before, trained_s)
    assert dict(read_events(run_id))["done"] == {"status": "cancelled"}


def test_stop_mid_run_saves_a_checkpoint_and_the_adapter_at_the_step_it_lands(loradeck_env: dict[str, str]) -> None:
    # Stop reaches the trainer through the control thread too: a checkpoint at the step where it lands (not
    # a save step), then the adapter, and the run ends `stopped`.
    run_id = create_run(QLORA, max_steps=10_000, save_steps=0)
    worker = train_in_thread(run_id, until_step=2)

    with get_sessionmaker()() as session:
        runs_service.stop_run(session=session, run_id=run_id)
    worker.join(timeout=120)

    run = read_run(run_id)
    assert not worker.is_alive()
    assert run.status == RunStatus.stopped and 2 <= run.step < 10_000, run.error
    checkpoint = get_settings().runs_dir / run_id / "checkpoints" / f"checkpoint-{run.step}"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    with get_sessionmaker()() as session:
        (adapter,) = runs.list_artifacts(session=session, run_id=run_id)
    assert adapter.kind == ArtifactKind.adapter and adapter.details["stopped_at_step"] == run.step


def test_unknown_target_module_fails_with_the_models_module_names(loradeck_env: dict[str, str]) -> None:
    run_id = create_run(QLORA, target_modules=["q_proj", "query_key_value"])

    run_training(run_id)

    run = read_run(run_id)
    assert run.status == RunStatus.failed
    assert run.error is not None and "query_key_value not found" in run.error
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert name in run.error
    assert run.step == 0
    kinds = [kind for kind, _ in read_events(run_id)]
    assert "params" not in kinds and kinds[-3:] == ["log", "status", "done"]


def test_a_bad_dataset_line_fails_the_run_naming_the_line(loradeck_env: dict[str, str], tmp_path: Path) -> None:
    lines = TRAIN.read_text(encoding="utf-8").splitlines()[:5]
    lines[3] = '{"prompt": "解析地址：臺北市\\n", "answer": "{}"}'
    dataset = tmp_path / "broken.jsonl"
    dataset.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run_id = create_run(QLORA, dataset=str(dataset))

    run_training(run_id)

    run = read_run(run_id)
    assert run.status == RunStatus.failed
    assert run.error == 'broken.jsonl line 4: "completion" is missing'


def test_training_goes_on_when_redis_is_down(loradeck_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = create_run(QLORA, max_steps=4)
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    get_settings.cache_clear()

    run_training(run_id)

    assert read_run(run_id).status == RunStatus.succeeded
    with get_sessionmaker()() as session:
        assert [point.step for point in runs.list_metrics(session=session, run_id=run_id)] == [1, 2, 3, 4]
