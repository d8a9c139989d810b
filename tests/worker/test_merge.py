"""Merging a trained adapter into its base: the saved model must behave exactly like adapter-on-base."""

from __future__ import annotations

import json

import redis
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from app import runs
from app.config import SAMPLE_DATASET_DIR, TINY_MODEL_DIR, get_settings
from app.db import get_sessionmaker
from app.events import stream_key
from app.models import ArtifactKind, ArtifactStatus, RunStatus
from app.schemas import RunSpec
from worker.merge import merge_artifact
from worker.train import run_training


def _spec() -> RunSpec:
    return RunSpec(
        base_model=str(TINY_MODEL_DIR),
        dataset=str(SAMPLE_DATASET_DIR / "train.jsonl"),
        method="qlora",
        max_steps=8,
        per_device_train_batch_size=4,
        learning_rate=2e-3,
        max_seq_length=128,
    )


def _trained_run() -> str:
    with get_sessionmaker()() as session:
        run_id = runs.create_run(session=session, spec=_spec()).id
    run_training(run_id)
    with get_sessionmaker()() as session:
        assert runs.get_run(session=session, run_id=run_id).status == RunStatus.succeeded
    return run_id


def test_merged_model_loads_with_stock_transformers_and_matches_adapter_on_base(
    loradeck_env: dict[str, str],
) -> None:
    run_id = _trained_run()
    with get_sessionmaker()() as session:
        artifact, created = runs.request_merge(session=session, run_id=run_id, dtype="auto")
    assert created

    merge_artifact(artifact.id)

    with get_sessionmaker()() as session:
        merged = runs.get_artifact(session=session, artifact_id=artifact.id)
    assert merged.status == ArtifactStatus.ready, merged.error
    assert (merged.kind, merged.path) == (ArtifactKind.merged, f"{run_id}/merged")
    assert merged.details["dtype"] == "float32"  # auto: the tiny base is stored in float32
    assert merged.details["max_abs_diff"] < 1e-3 and merged.details["base_diff"] > 1e-6
    assert len(merged.details["prompts"]) == 3
    names = {entry["name"] for entry in merged.files}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(name.endswith((".bin", ".pt")) for name in names)

    run_dir = get_settings().runs_dir / run_id
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "merged")
    ids = tokenizer("解析地址：臺北市大安區復興南路一段390號2樓\n", return_tensors="pt").input_ids
    with torch.no_grad():
        merged_logits = AutoModelForCausalLM.from_pretrained(run_dir / "merged").eval()(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype=torch.float32).eval()
        base_logits = base(input_ids=ids).logits
        adapter_logits = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()(input_ids=ids).logits
    assert (merged_logits - adapter_logits).abs().max() < 1e-3
    assert (merged_logits - base_logits).abs().max() > 1e-6

    client = redis.Redis.from_url(get_settings().redis_url, decode_responses=True)
    artifact_events = [
        json.loads(fields["data"])
        for _id, fields in client.xrange(stream_key(run_id))  # type: ignore[union-attr]
        if fields["event"] == "artifact" and json.loads(fields["data"])["id"] == artifact.id
    ]
    client.close()
    assert [event["status"] for event in artifact_events] == ["running", "ready"]
    assert artifact_events[-1]["sha256"] == merged.sha256

    merge_artifact(artifact.id)  # a re-delivered task must not redo or undo a finished merge
    with get_sessionmaker()() as session:
        again = runs.get_artifact(session=session, artifact_id=artifact.id)
    assert (again.status, again.sha256) == (ArtifactStatus.ready, merged.sha256)


def test_merge_in_bfloat16_saves_bfloat16_weights(loradeck_env: dict[str, str]) -> None:
    run_id = _trained_run()
    with get_sessionmaker()() as session:
        artifact, _ = runs.request_merge(session=session, run_id=run_id, dtype="bfloat16")

    merge_artifact(artifact.id)

    with get_sessionmaker()() as session:
        merged = runs.get_artifact(session=session, artifact_id=artifact.id)
    assert merged.status == ArtifactStatus.ready, merged.error
    model = AutoModelForCausalLM.from_pretrained(get_settings().runs_dir / run_id / "merged", dtype="auto")
    assert model.dtype == torch.bfloat16 and merged.details["dtype"] == "bfloat16"


def test_merge_without_an_adapter_fails_in_plain_words(loradeck_env: dict[str, str]) -> None:
    with get_sessionmaker()() as session:
        run_id = runs.create_run(session=session, spec=_spec()).id
        runs.claim_run(session=session, run_id=run_id, worker="gone:1")
        runs.finish_run(session=session, run_id=run_id, status=RunStatus.succeeded)  # but its files are lost
        artifact, _ = runs.request_merge(session=session, run_id=run_id, dtype="auto")

    merge_artifact(artifact.id)

    with get_sessionmaker()() as session:
        failed = runs.get_artifact(session=session, artifact_id=artifact.id)
    assert failed.status == ArtifactStatus.failed
    assert "no saved adapter" in failed.error
