"""The run page shows which base the evaluation compared against, and the merge check's figures; records
written before these fields existed still render."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import runs
from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR
from app.db import get_sessionmaker
from app.models import Artifact, ArtifactKind, ArtifactStatus, RunStatus
from app.schemas import RunSpec

TASK = {
    "base": {"rows": 4, "exact_match": 0.0, "field_accuracy": 0.25},
    "adapter": {"rows": 4, "exact_match": 0.5, "field_accuracy": 0.75},
}
EXAMPLES = [{"prompt": "p", "expected": "e", "base": "b", "adapter": "a"}]


@pytest.fixture
def client(loradeck_env: dict[str, str]) -> Iterator[TestClient]:
    from app.main import app

    with TestClient(app) as test_client:
        yield test_client


def _run(method: str, evaluation: dict[str, Any]) -> str:
    spec = RunSpec(base_model=str(TINY_MODEL_DIR), dataset=str(SAMPLE_DATASET_DIR / "train.jsonl"), method=method)
    with get_sessionmaker()() as session:
        run_id = runs.create_run(session=session, spec=spec).id
        runs.claim_run(session=session, run_id=run_id, worker="test:1")
        runs.finish_run(session=session, run_id=run_id, status=RunStatus.succeeded)
        runs.record_evaluation(session=session, run_id=run_id, evaluation=evaluation)
    return run_id


def test_a_qlora_evaluation_names_its_full_precision_base(client: TestClient) -> None:
    base = {
        "label": "full-precision base (float32)",
        "dtype": "float32",
        "quantization": "none",
        "trained_quantization": "4bit",
        "note": "trained on a 4-bit copy of the base; base and adapter answer here on the full-precision base, "
        "as the merged download does",
    }
    run_id = _run("qlora", {"base": base, "task": TASK, "examples": EXAMPLES, "seconds": 1.0})
    page = client.get(f"/runs/{run_id}/evaluation")
    assert page.status_code == 200
    assert '<th data-side="base">full-precision base (float32)</th>' in page.text
    assert "trained on a 4-bit copy of the base" in page.text
    assert "50.0%" in page.text


def test_an_evaluation_recorded_before_the_base_was_named_still_renders(client: TestClient) -> None:
    run_id = _run("lora", {"task": TASK, "examples": EXAMPLES, "seconds": 1.0})
    page = client.get(f"/runs/{run_id}/evaluation")
    assert page.status_code == 200
    assert '<th data-side="base">base</th>' in page.text and "50.0%" in page.text


def _artifact(run_id: str, status: ArtifactStatus, details: dict[str, Any], error: str | None = None) -> None:
    with get_sessionmaker()() as session:
        session.add(
            Artifact(run_id=run_id, kind=ArtifactKind.merged, status=status, details=details, error=error, path="x")
        )
        session.commit()


def test_the_merge_check_figures_show_on_the_artifact(client: TestClient) -> None:
    run_id = _run("lora", {"task": TASK, "seconds": 1.0})
    figures = {
        "dtype": "bfloat16",
        "max_rel_diff": 0.0173,
        "rel_tolerance": 0.0625,
        "max_abs_diff": 0.117,
        "top1_agreement": 1.0,
        "max_kl": 0.00088,
        "base_diff": 13.4,
    }
    _artifact(run_id, ArtifactStatus.ready, figures)
    refused = figures | {"max_rel_diff": 0.21, "top1_agreement": 0.905}
    _artifact(run_id, ArtifactStatus.failed, refused, error="the merge is not faithful")
    page = client.get(f"/runs/{run_id}/artifacts")
    assert page.status_code == 200
    text = " ".join(page.text.split())
    assert "logits off by 0.017 of their spread (allowed in bfloat16: 0.062)" in text
    assert "the same top token at 100.0% of positions, largest KL 0.00088" in text
    assert "logits off by 0.21 of their spread" in text and "at 90.5% of positions" in text


def test_a_merge_checked_before_the_relative_figures_still_renders(client: TestClient) -> None:
    run_id = _run("lora", {"task": TASK, "seconds": 1.0})
    _artifact(run_id, ArtifactStatus.ready, {"dtype": "float32", "max_abs_diff": 2e-5, "base_diff": 0.5})
    page = client.get(f"/runs/{run_id}/artifacts")
    assert page.status_code == 200
    assert "max |merged − adapter-on-base| logit = 2.00e-05" in page.text
