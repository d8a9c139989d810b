"""`loradeck train | estimate | validate-dataset`, as a user runs them in a terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from app import runs
from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR, get_settings
from app.db import get_sessionmaker
from app.models import RunStatus
from app.processes import free_port
from tests.worker.conftest import TRAIN, read_events
from worker.cli import main

REPO = Path(__file__).resolve().parents[2]
SPEC_YAML = f"""\
name: from-the-terminal
base_model: {TINY_MODEL_DIR}
dataset: {TRAIN}
method: lora
max_steps: 12
regression_prompts: []
save_steps: 5
per_device_train_batch_size: 4
max_seq_length: 96
learning_rate: 0.002
"""


def loradeck(*args: str, env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def _only_run() -> Any:
    with get_sessionmaker()() as session:
        (run,) = runs.list_runs(session=session)
        return run, runs.list_metrics(session=session, run_id=run.id)


@pytest.mark.slow
def test_train_runs_a_yaml_spec_with_a_progress_bar_and_prints_the_adapter(
    loradeck_env: dict[str, str], tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_YAML, encoding="utf-8")

    done = loradeck("train", str(spec), env=loradeck_env)

    assert done.returncode == 0, done.stderr
    run, points = _only_run()
    assert (run.status, run.name, run.step) == (RunStatus.succeeded, "from-the-terminal", 12)
    assert [point.step for point in points] == list(range(1, 13))
    run_dir = get_settings().runs_dir / run.id
    lines = done.stdout.splitlines()
    assert lines[0] == f"run {run.id}: {run_dir}"
    assert lines[1] == "status: running"
    chosen = [line for line in lines if line.startswith("fast path ")]  # each throughput switch, then the counts
    assert len(chosen) == 5 and lines[2:7] == chosen
    assert lines[7].startswith("trainable params: 116,736 || all params: 2,969,280 || trainable%: 3.93")
    assert "checkpoint saved at step 5" in lines and "status: succeeded" in lines
    assert lines[-1] == f"adapter: {run_dir / 'adapter'}"
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert "12/12" in done.stderr and "loss=" in done.stderr  # the tqdm bar
    assert {"spec.json", "train.log", "adapter", "checkpoints"} <= {path.name for path in run_dir.iterdir()}
    # The live events went to Redis as a worker's would.
    kinds = [kind for kind, _ in read_events(run.id)]
    assert kinds[:3] == ["status", "log", "params"] and kinds[-1] == "done" and kinds.count("metric") == 12


@pytest.mark.slow
def test_train_without_redis_and_ctrl_c_then_resume(loradeck_env: dict[str, str], tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    # 30 steps: enough left after checkpoint-5 for the Ctrl-C to land mid-run (the tiny model does ~7 a second).
    fields = {"base_model": str(TINY_MODEL_DIR), "dataset": str(TRAIN), "method": "lora", "max_steps": 30}
    spec.write_text(json.dumps({**fields, "save_steps": 5, "max_seq_length": 96, "per_device_train_batch_size": 4}))
    env = {**loradeck_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens there
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "train", str(spec), "--name", "interrupted"],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoints = get_settings().runs_dir
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("*/checkpoints/checkpoint-5/trainer_state.json")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    run, _ = _only_run()
    assert (run.status, run.name) == (RunStatus.interrupted, "interrupted")
    assert f"Resume from its checkpoint of step 5 with: loradeck train --resume {run.id}" in stderr
    assert "status: interrupted" in stdout

    resumed = loradeck("train", "--resume", run.id, env=env)

    assert resumed.returncode == 0, resumed.stderr
    run, points = _only_run()
    assert run.status == RunStatus.succeeded and run.step == 30
    assert [point.step for point in points if point.kind == "train"] == list(range(1, 31))
    assert "resumed from the checkpoint at step 5" in resumed.stdout
    assert resumed.stdout.splitlines()[-1] == f"adapter: {get_settings().runs_dir / run.id / 'adapter'}"


def _stock_lora_counts() -> tuple[int, int]:
    base = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(base, config).get_nb_trainable_parameters()


def test_estimate_prints_the_parameter_counts_and_a_memory_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_YAML, encoding="utf-8")
    trainable, total = _stock_lora_counts()

    assert main(["estimate", str(spec)]) == 0

    out = capsys.readouterr().out.splitlines()
    assert (
        out[0]
        == f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
    )
    table = {line.split()[0] for line in out if line.startswith("  ")}
    assert table == {"weights", "adapter", "gradients", "optimizer", "activations", "total"}

    assert main(["estimate", str(spec), "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)
    assert (estimate["params"]["trainable"], estimate["params"]["all"]) == (trainable, total)


def test_a_bad_spec_file_prints_each_field_error_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"base_model: {TINY_MODEL_DIR}\ndataset: {TRAIN}\nr: 0\nlearning_rate: fast\n", encoding="utf-8")

    assert main(["estimate", str(spec)]) == 2

    err = capsys.readouterr().err.splitlines()
    assert err == [
        "r: Input should be greater than or equal to 1",
        "learning_rate: Input should be a valid number, unable to parse string as a number",
    ]
    spec.write_text(f"base_model: {TINY_MODEL_DIR}\ndataset: {TRAIN}\nmethod: qlora\nquantization: 8bit\n")
    assert main(["train", str(spec)]) == 2
    assert capsys.readouterr().err.startswith("quantization: method qlora trains on a 4-bit base, not 8bit")
    spec.write_text("- just\n- a list\n")
    assert main(["estimate", str(spec)]) == 2
    assert "expected a mapping of RunSpec fields" in capsys.readouterr().err


def test_validate_dataset_prints_each_bad_line_and_exits_1(loradeck_env: dict[str, str], tmp_path: Path) -> None:
    lines = TRAIN.read_text(encoding="utf-8").splitlines()[:6]
    lines[1] = '{"prompt": "解析地址：臺北市"'
    lines[3] = '{"prompt": "解析地址：臺北市", "answer": "{}"}'
    dataset = tmp_path / "broken.jsonl"
    dataset.write_text("\n".join(lines) + "\n", encoding="utf-8")

    checked = loradeck("validate-dataset", str(dataset), env=loradeck_env)

    assert checked.returncode == 1
    errors = [line for line in checked.stderr.splitlines() if line.startswith("broken.jsonl")]
    assert [line.split(":")[0] for line in errors] == ["broken.jsonl line 2", "broken.jsonl line 4"]
    assert checked.stderr.splitlines()[-1] == "2 bad rows"


def test_validate_dataset_describes_a_good_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate-dataset", str(SAMPLE_DATASET_DIR / "eval.jsonl"), "--max-seq-length", "48"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[0] == "eval.jsonl: 200 rows of prompt_completion (jsonl)"
    assert out[1].startswith("tokens per row: min ") and " p50 " in out[1] and " p99 " in out[1]
    assert out[2].startswith("cut at max_seq_length 48: ")
    assert main(["validate-dataset", str(SAMPLE_DATASET_DIR / "eval.jsonl"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["description"]["rows"] == 200
