"""Merge a run's adapter into its base model, prove the merge is faithful, and offer it for download.

The merge itself streams (`worker.merge.streaming`): tensor by tensor onto the full-precision base
(never the 4-bit copy QLoRA trained on: merging into quantized weights would round the update away),
in memory bounded by the largest tensor. Then the proof, before the artifact turns ready: a few prompts
of the run's own data go through the merged model, loaded from its folder by stock transformers, and
through the adapter on its base. Their logits must agree (it is the same function), within what rounding
to the output dtype explains relative to each position's logits, and differ from the bare base's (else the
adapter changed nothing). Only then are the model card and SHA256SUMS written and
the folder moved to `merged`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app import runs
from app.archive import describe_tree
from app.config import get_settings
from app.db import get_sessionmaker
from app.models import Artifact, ArtifactStatus, Metric
from worker.data.encode import read_rows
from worker.engine.callbacks import EventPublisher
from worker.merge.model_card import render_model_card, write_sha256sums
from worker.merge.streaming import merge_adapter_streaming

log = logging.getLogger(__name__)

# Merged vs adapter-on-base, both run in fp32, judged per position (row of logits) relative to that row's
# spread (its standard deviation over the vocabulary): rounding a weight to the output dtype moves a logit
# in proportion to the logits' own size, so a model with peaked (large) logits moves them by more in
# absolute terms (a correct bf16 merge of a small model with a scaled-up head: 0.1) while the relative
# error stays that of the dtype (1e-2 there, at 1, 30 or 100 times the head). The allowance is 16 units of
# the output dtype's rounding (2^-8 for bf16, 2^-11 for fp16) relative to the spread; fp32 merges differ
# only in summation order (2e-6 seen) and get 1e-4. A wrong merge (a module's delta left out, or applied
# at the wrong scale) errs by the size of the adapter's own effect: 0.1 to 1.8 measured, refused. Top-1
# agreement and the largest KL divergence are recorded beside it, to read the risk in predictions.
REL_TOLERANCES = {"float32": 1e-4, "bfloat16": 16 * 2**-8, "float16": 16 * 2**-11}
MIN_SPREAD = 1e-3  # a row of (nearly) equal logits is judged against this spread, not against zero
CHANGED_THRESHOLD = 1e-6  # merged vs base: below this the adapter did nothing
CHECK_PROMPTS = 3
CHECK_TOKENS = 256  # prompts are cut to this many tokens: the check is about weights, not long contexts
PARTIAL = "merged.partial"
TEXT_CHARS = 200  # a row without a prompt contributes the start of its text


class MergeError(RuntimeError):
    """The merge cannot be offered; the message says why in plain words, and `details` holds the figures
    it was judged by (recorded on the failed artifact)."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details


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
        training = {
            "steps": run.step,
            "train_loss": _last_loss(session, run_id, "train"),
            "eval_loss": _last_loss(session, run_id, "eval"),
        }

    publisher = EventPublisher(settings.redis_url, run_id, maxlen=settings.stream_maxlen)
    publisher.publish("artifact", {"id": artifact_id, "kind": artifact.kind, "status": ArtifactStatus.running})
    values: dict[str, Any]
    try:
        values = _merge(run_id, spec, dtype, settings.runs_dir / run_id, settings.allow_trust_remote_code, training)
        values["status"] = ArtifactStatus.ready
    except Exception as exc:
        log.exception("merge of run %s failed", run_id)
        plain = isinstance(exc, MergeError | OSError | ValueError)  # UnmergeableAdapter is a ValueError
        error = str(exc) if plain else f"{type(exc).__name__}: {exc}"
        values = {"status": ArtifactStatus.failed, "error": error}
        if isinstance(exc, MergeError) and exc.details:
            values["details"] = exc.details
        shutil.rmtree(settings.runs_dir / run_id / PARTIAL, ignore_errors=True)  # no half model left behind
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


def _merge(
    run_id: str, spec: dict[str, Any], dtype: str, run_dir: Path, trust: bool, training: dict[str, Any]
) -> dict[str, Any]:
    started = time.perf_counter()
    adapter_dir = run_dir / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise MergeError(f"run {run_id} has no saved adapter at {adapter_dir}; train it to success first")
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base_dir = local_model_dir(spec["base_model"])
    prompts = check_prompts(spec["dataset"])

    partial = run_dir / PARTIAL  # a crash mid-save must never leave a half model under `merged`
    shutil.rmtree(partial, ignore_errors=True)
    _reset_peak_rss()
    summary = merge_adapter_streaming(base_dir, adapter_dir, partial, dtype=dtype)
    peak_rss = _peak_rss()
    check = check_merge(base_dir, adapter_dir, partial, prompts, trust=trust)
    tolerance = REL_TOLERANCES[summary["dtype"]]
    log.info("merge check in %s (max_rel_diff allowed: %.3g): %s", summary["dtype"], tolerance, check)
    figures = {**check, "rel_tolerance": tolerance, "dtype": summary["dtype"], "prompts": prompts}
    if not check["max_rel_diff"] <= tolerance:
        raise MergeError(
            f"the merged model's logits differ from adapter-on-base by {check['max_rel_diff']:.3g} of their "
            f"spread (largest difference {check['max_abs_diff']:.3g}; top-1 agreement "
            f"{100 * check['top1_agreement']:.1f}%, largest KL divergence {check['max_kl']:.3g}), more than "
            f"rounding to {summary['dtype']} explains (allowed: {tolerance:.3g}); the merge is not faithful",
            figures,
        )
    if not check["base_diff"] > CHANGED_THRESHOLD:
        raise MergeError(
            f"the merged model gives the same logits as the base (difference {check['base_diff']:.3g}): "
            "the adapter changes nothing, so there is nothing to merge",
            figures,
        )

    vllm_reason = vllm_lora_incompatibility(adapter_config)
    details = {
        **figures,
        "shards": summary["shards"],
        "merged_tensors": summary["merged_tensors"],
        "untied_embeddings": summary["untied_embeddings"],
        "merge_seconds": summary["seconds"],
        "peak_rss_bytes": peak_rss,
        "vllm_lora_compatible": vllm_reason is None,
        **({"vllm_reason": vllm_reason} if vllm_reason else {}),
    }
    card = render_model_card(spec=spec, adapter_config=adapter_config, check=details, **training)
    (partial / "README.md").write_text(card, encoding="utf-8")
    write_sha256sums(partial, known=summary["sha256"])  # last: it covers every other file
    target = run_dir / "merged"
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    tree = describe_tree(target, prefix=f"{run_id}-merged")
    details["seconds"] = round(time.perf_counter() - started, 3)
    return {
        "path": f"{run_id}/merged",
        "size_bytes": tree["archive_size"],
        "sha256": tree["archive_sha256"],
        "files": tree["files"],
        "details": details,
    }


def check_merge(
    base_dir: Path, adapter_dir: Path, merged_dir: Path, prompts: list[str], *, trust: bool
) -> dict[str, float]:
    """The merged model (stock transformers, fp32, from its folder) against adapter-on-base over the
    prompts, position by position (`compare_logits`), and its largest logit difference from the bare
    base (`base_diff`)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir, trust_remote_code=trust)
    inputs = [tokenizer(prompt, return_tensors="pt").input_ids[:, :CHECK_TOKENS] for prompt in prompts]
    inputs = [ids for ids in inputs if ids.numel()]
    if not inputs:
        raise MergeError("the dataset's first rows tokenize to nothing, so the merge cannot be checked")
    load = {"dtype": torch.float32, "device_map": {"": "cpu"}, "use_safetensors": True, "trust_remote_code": trust}
    # One model in memory at a time: the base, then the same base with the adapter, then the merged one.
    base = AutoModelForCausalLM.from_pretrained(base_dir, **load)
    base_logits = _logits(base, inputs)
    adapter_logits = _logits(PeftModel.from_pretrained(base, str(adapter_dir)), inputs)
    del base
    gc.collect()
    merged_logits = _logits(AutoModelForCausalLM.from_pretrained(merged_dir, **load), inputs)
    gc.collect()
    figures = compare_logits(torch.cat(merged_logits, dim=1), torch.cat(adapter_logits, dim=1))
    figures["base_diff"] = max(float((m - b).abs().max()) for m, b in zip(merged_logits, base_logits, strict=True))
    return figures


def compare_logits(merged: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Logits (positions, vocab) of the merged model against the reference's (adapter-on-base):
    `max_rel_diff`, the largest difference in a row over that row's spread (standard deviation over the
    vocabulary, at least MIN_SPREAD); `max_abs_diff`, the largest difference; `top1_agreement`, the share
    of positions whose most likely next token is the same; `max_kl`, the largest KL(reference || merged)
    in nats."""
    merged, reference = merged.reshape(-1, merged.shape[-1]).float(), reference.reshape(-1, reference.shape[-1]).float()
    difference = (merged - reference).abs().amax(dim=-1)
    spread = reference.std(dim=-1).clamp(min=MIN_SPREAD)
    log_p, log_q = torch.log_softmax(reference, dim=-1), torch.log_softmax(merged, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    return {
        "max_rel_diff": float((difference / spread).max()),
        "max_abs_diff": float(difference.max()),
        "top1_agreement": float((merged.argmax(dim=-1) == reference.argmax(dim=-1)).float().mean()),
        "max_kl": max(float(kl.max()), 0.0),
    }


@torch.no_grad()
def _logits(model: torch.nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    model.eval()  # dropout off: the models must be compared as the same function
    return [model(input_ids=ids).logits.float() for ids in inputs]


def check_prompts(dataset: str | Path, limit: int = CHECK_PROMPTS) -> list[str]:
    """The first rows of the run's dataset as prompts: a row's prompt, else the start of its text (a text
    row's text, a conversation's turns joined)."""
    prompts = []
    for row in read_rows(dataset, limit=limit):
        if row.shape == "prompt_completion":
            prompts.append(row.prompt)
        elif row.shape == "messages":
            prompts.append("\n".join(message.get("content", "") for message in row.messages)[:TEXT_CHARS])
        else:
            prompts.append(row.text[:TEXT_CHARS])
    return prompts


def vllm_lora_incompatibility(adapter_config: dict[str, Any]) -> str | None:
    """Why vLLM could not serve this adapter as a LoRA on the base (the merged model it can always serve)."""
    if adapter_config.get("peft_type") != "LORA":
        return f"vLLM serves LoRA adapters only, not {adapter_config.get('peft_type')}"
    if adapter_config.get("modules_to_save"):
        return (
            f"it trains whole modules ({', '.join(adapter_config['modules_to_save'])} in modules_to_save), "
            "which vLLM's LoRA loading cannot apply"
        )
    if adapter_config.get("use_dora"):
        return "vLLM's LoRA serving does not implement DoRA"
    return None


def local_model_dir(base_model: str) -> Path:
    """The base's folder: a local path as given, a hub id fetched (safetensors and configs only) or cached."""
    if Path(base_model).is_dir():
        return Path(base_model)
    from huggingface_hub import snapshot_download

    patterns = ["*.safetensors", "*.json", "*.model", "*.txt", "*.jinja", "LICENSE*", "NOTICE*", "USE_POLICY*"]
    return Path(snapshot_download(base_model, allow_patterns=patterns))


def _last_loss(session: Session, run_id: str, kind: str) -> float | None:
    # One indexed row, not the run's whole history (which may hold a million points).
    query = (
        select(Metric.loss)
        .where(Metric.run_id == run_id, Metric.kind == kind, Metric.loss.is_not(None))
        .order_by(Metric.step.desc(), Metric.id.desc())
        .limit(1)
    )
    return session.scalar(query)


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets this process's peak RSS (VmHWM), so the figure is the merge's
    # own and not that of a training run the same worker process did before.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss() -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    line = next((line for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return int(line.split()[1]) * 1024 if line else None
