"""Merge a run's adapter into its base model, prove the merge is faithful, and save it as safetensors.

The base is reloaded in fp32 (never the 4-bit copy QLoRA trained on): merging into quantized weights
would round the update away. Before saving, the merged model must give the same logits as the
adapter on top of the base (it is the same function), and different logits from the bare base
(otherwise the adapter changed nothing).
"""

from __future__ import annotations

import gc
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from sqlalchemy import update
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from app import runs
from app.archive import describe_tree
from app.config import get_settings
from app.db import get_sessionmaker
from app.models import Artifact, ArtifactStatus
from worker.callbacks import EventPublisher
from worker.data import encode_prompt, read_rows

log = logging.getLogger(__name__)

SAME_TOLERANCE = 1e-3  # merged vs adapter-on-base, fp32 logits: only summation order may differ
CHANGED_THRESHOLD = 1e-6  # merged vs base: below this the adapter did nothing
CHECK_PROMPTS = 3


class MergeError(RuntimeError):
    """The merge cannot be offered; the message says why in plain words."""


def merge_artifact(artifact_id: str) -> None:
    settings = get_settings()
    sessions = get_sessionmaker()
    with sessions() as session:
        # One conditional UPDATE, like claim_run: a re-delivered task finds the artifact taken.
        claimed = session.execute(
            update(Artifact)
            .where(Artifact.id == artifact_id, Artifact.status == ArtifactStatus.pending)
            .values(status=ArtifactStatus.running, error=None)
        )
        session.commit()
        artifact = runs.get_artifact(session=session, artifact_id=artifact_id)
        if not claimed.rowcount:  # type: ignore[attr-defined]
            log.info("merged artifact %s is %s, not pending; nothing to do", artifact_id, artifact.status)
            return
        run = runs.get_run(session=session, run_id=artifact.run_id)
        run_id, spec, dtype = run.id, dict(run.spec), (artifact.details or {}).get("dtype", "auto")

    publisher = EventPublisher(settings.redis_url, run_id, maxlen=settings.stream_maxlen)
    publisher.publish("artifact", {"id": artifact_id, "kind": artifact.kind, "status": ArtifactStatus.running})
    values: dict[str, Any]
    try:
        values = _merge(run_id, spec, dtype, settings.runs_dir / run_id, settings.allow_trust_remote_code)
        values["status"] = ArtifactStatus.ready
    except Exception as exc:
        log.exception("merge of run %s failed", run_id)
        plain = isinstance(exc, MergeError | OSError | ValueError)
        error = str(exc) if plain else f"{type(exc).__name__}: {exc}"
        values = {"status": ArtifactStatus.failed, "error": error}
    finally:
        gc.collect()

    with sessions() as session:
        session.execute(update(Artifact).where(Artifact.id == artifact_id).values(**values))
        session.commit()
        artifact = runs.get_artifact(session=session, artifact_id=artifact_id)
        payload = {
            "id": artifact.id,
            "kind": artifact.kind,
            "status": artifact.status,
            "size_bytes": artifact.size_bytes,
            "sha256": artifact.sha256,
            "error": artifact.error,
            "details": artifact.details,
        }
    publisher.publish("artifact", payload)
    publisher.close()


def _merge(run_id: str, spec: dict[str, Any], dtype: str, run_dir: Path, trust: bool) -> dict[str, Any]:
    adapter_dir = run_dir / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise MergeError(f"run {run_id} has no saved adapter at {adapter_dir}; train it to success first")
    base_model = spec["base_model"]
    tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust)
    save_dtype = _save_dtype(dtype, base_model, trust)
    prompts = [row.prompt for row in read_rows(spec["dataset"], limit=CHECK_PROMPTS)]
    inputs = [torch.tensor([encode_prompt(tokenizer, prompt)]) for prompt in prompts]

    model = AutoModelForCausalLM.from_pretrained(
        base_model, dtype=torch.float32, device_map={"": "cpu"}, use_safetensors=True, trust_remote_code=trust
    )
    base_logits = _logits(model, inputs)
    with_adapter = PeftModel.from_pretrained(model, str(adapter_dir))
    adapter_logits = _logits(with_adapter, inputs)
    merged = with_adapter.merge_and_unload()
    merged_logits = _logits(merged, inputs)

    max_abs_diff = max(float((m - a).abs().max()) for m, a in zip(merged_logits, adapter_logits, strict=True))
    base_diff = max(float((m - b).abs().max()) for m, b in zip(merged_logits, base_logits, strict=True))
    log.info("merge check, %d prompts: max_abs_diff=%.3g base_diff=%.3g", len(inputs), max_abs_diff, base_diff)
    if not max_abs_diff < SAME_TOLERANCE:
        raise MergeError(
            f"the merged model's logits differ from adapter-on-base by {max_abs_diff:.3g} "
            f"(allowed: {SAME_TOLERANCE:g}); the merge is not faithful"
        )
    if not base_diff > CHANGED_THRESHOLD:
        raise MergeError(
            f"the merged model gives the same logits as the base (difference {base_diff:.3g}): "
            "the adapter changes nothing, so there is nothing to merge"
        )

    target = run_dir / "merged"
    partial = run_dir / "merged.partial"  # a crash mid-save must never leave a half model under `merged`
    shutil.rmtree(partial, ignore_errors=True)
    merged.to(save_dtype).save_pretrained(str(partial), safe_serialization=True)
    tokenizer.save_pretrained(str(partial))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    del model, with_adapter, merged

    tree = describe_tree(target, prefix=f"{run_id}-merged")
    return {
        "path": f"{run_id}/merged",
        "size_bytes": tree["archive_size"],
        "sha256": tree["archive_sha256"],
        "files": tree["files"],
        "details": {
            "dtype": str(save_dtype).removeprefix("torch."),
            "max_abs_diff": max_abs_diff,
            "base_diff": base_diff,
            "prompts": prompts,
        },
    }


def _save_dtype(name: str, base_model: str, trust: bool) -> torch.dtype:
    """The dtype to save in; auto is the dtype the base's config declares (its checkpoint's dtype)."""
    if name != "auto":
        return getattr(torch, name)  # type: ignore[no-any-return]
    # Read before loading: loading in fp32 rewrites the in-memory config's dtype to fp32.
    declared = getattr(AutoConfig.from_pretrained(base_model, trust_remote_code=trust), "dtype", None)
    if isinstance(declared, str):
        declared = getattr(torch, declared, None)
    return declared if isinstance(declared, torch.dtype) else torch.float32


@torch.no_grad()
def _logits(model: torch.nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    model.eval()  # dropout off: the three models must be compared as the same function
    return [model(input_ids=ids).logits.float() for ids in inputs]
