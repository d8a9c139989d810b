"""`loradeck estimate` and `loradeck train` on a local model directory: the estimate reads config.json alone;
training refuses, before loading anything, a directory without weights or tokenizer, naming what it lacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.worker.conftest import TRAIN
from worker.cli import main

LLAMA_8B = Path(__file__).parent / "configs" / "llama-8b"  # config.json alone: no weights, no tokenizer


def test_estimate_reads_config_json_alone_and_train_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"base_model: {LLAMA_8B}\ndataset: {TRAIN}\nmethod: lora\nmax_steps: 1\n", encoding="utf-8")
    assert main(["estimate", str(spec), "--json"]) == 0
    assert capsys.readouterr().out.lstrip().startswith("{")
    assert main(["train", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"base_model: {LLAMA_8B.resolve()} has no safetensors weights and has no tokenizer" in err
