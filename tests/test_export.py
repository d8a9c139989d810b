"""Export for llama.cpp and Ollama through the real worker: a trained run's merged model as GGUF f16 and q8_0 (the
merge done first by the export itself), each loaded here by llama.cpp and held to transformers on the same token
ids, the Modelfile in the same download pointing at the file beside it."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.config import SAMPLE_DATASET_DIR
from app.events import stream_key
from tests.conftest import Stack, wait_for
from tests.sse import open_stream
from worker.export.modelfile import go_template, validate_modelfile

# Stated tolerances of the logits on the same ids, relative to each position's spread (std over the vocabulary):
# what the export's own check allows (worker/export/gguf_check.py). The absolute figure for f16 is bounded too:
# 0.013 measured on the bundled model (README, GGUF export), from rounding weights and activations to f16.
REL_TOLERANCE = {"f16": 0.02, "q8_0": 0.6}
F16_MAX_ABS = 0.02
PROMPTS = 4


def _artifact(client: Any, run_id: str, artifact_id: str) -> dict[str, Any] | None:
    for artifact in client.get(f"/api/v1/runs/{run_id}/artifacts").json():
        if artifact["id"] == artifact_id and artifact["status"] in ("ready", "failed"):
            return dict(artifact)
    return None


def _same_ids_and_logits(gguf: Path, merged: Path, prompts: list[str]) -> tuple[bool, float, float]:
    """(llama.cpp's tokenizer gives the merged model's ids, max |logit diff|, max diff / row spread)."""
    import llama_cpp

    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    ids = [list(tokenizer(prompt)["input_ids"]) for prompt in prompts]
    f32 = llama_cpp.GGML_TYPE_F32  # an f32 KV cache: judge the file, not llama.cpp's f16 cache
    size = max(map(len, ids)) + 1
    llm = llama_cpp.Llama(str(gguf), n_ctx=size, n_batch=size, logits_all=True, type_k=f32, type_v=f32, verbose=False)
    same, worst, worst_rel = True, 0.0, 0.0
    for prompt, prompt_ids in zip(prompts, ids, strict=True):
        same &= llm.tokenize(prompt.encode(), add_bos=True, special=True) == prompt_ids
        with torch.inference_mode():
            expected = model(torch.tensor([prompt_ids])).logits[0].numpy()
        llm.reset()
        llm.eval(prompt_ids)
        got = np.array(llm.scores[: len(prompt_ids)], dtype=np.float32)
        difference = np.abs(got - expected).max(axis=-1)
        worst = max(worst, float(difference.max()))
        worst_rel = max(worst_rel, float((difference / np.maximum(expected.std(axis=-1), 1e-3)).max()))
    return same, worst, worst_rel


def test_f16_and_q8_0_exports_load_in_llama_cpp_match_transformers_and_carry_a_modelfile(
    gguf_stack: Stack, tmp_path: Path
) -> None:
    client = gguf_stack.client()
    run_id = gguf_stack.start_run(name="gguf export", method="lora", max_steps=12, per_device_train_batch_size=4)["id"]
    run = gguf_stack.wait_run(run_id, timeout=300)
    assert run["status"] == "succeeded", run["error"]
    assert not [a for a in client.get(f"/api/v1/runs/{run_id}/artifacts").json() if a["kind"] == "merged"]

    queued = {t: client.post(f"/api/v1/runs/{run_id}/export", json={"type": t}) for t in ("f16", "q8_0")}
    assert all(answer.status_code == 202 for answer in queued.values()), {t: a.text for t, a in queued.items()}
    again = client.post(f"/api/v1/runs/{run_id}/export", json={"type": "f16"}).json()
    assert again["id"] == queued["f16"].json()["id"], "the same type twice is one export"

    # Progress over SSE: the finished run's stream goes on while its exports are made, then says done.
    progress: list[tuple[str, str]] = []
    with open_stream(client, f"/api/v1/runs/{run_id}/events", until=("done",)) as events:
        for event in events:
            if event.name == "artifact" and event.data["kind"] == "gguf":
                stage = (event.data.get("details") or {}).get("progress", {}).get("stage", "")
                progress.append((event.data["status"], stage))
    assert ("running", "converting") in progress and ("running", "checking") in progress, progress
    assert progress.count(("ready", "")) == 2, "the stream ends once both exports are made"

    merged_dir = gguf_stack.data_dir / "runs" / run_id / "merged"
    prompts = [json.loads(line)["prompt"] for line in (SAMPLE_DATASET_DIR / "train.jsonl").open()][:PROMPTS]
    for gguf_type, answer in queued.items():
        artifact = wait_for(lambda a=answer: _artifact(client, run_id, a.json()["id"]), 600, f"the {gguf_type} export")
        assert artifact["status"] == "ready", artifact["error"]
        check = artifact["details"]["check"]
        assert check["passed"] and check["tokens_same"], check
        assert check["max_rel_logit_diff"] <= REL_TOLERANCE[gguf_type], check

        # One download: the .gguf, its Modelfile and SHA256SUMS; the archive is the artifact's sha256.
        body = client.get(artifact["download_url"]).content
        assert hashlib.sha256(body).hexdigest() == artifact["sha256"]
        into = tmp_path / gguf_type
        with tarfile.open(fileobj=io.BytesIO(body)) as archive:
            archive.extractall(into, filter="data")
        (folder,) = list(into.iterdir())
        names = sorted(path.name for path in folder.iterdir())
        gguf_name = f"{run_id}-{gguf_type}.gguf"
        assert names == sorted([gguf_name, "Modelfile", "SHA256SUMS"])
        parsed = dict(validate_modelfile((folder / "Modelfile").read_text(), names))
        assert parsed["model"] == f"./{gguf_name}"
        # The sample is prompt/completion data: the model learned to continue the prompt as it is.
        assert parsed["template"] == go_template("completion")

        # llama.cpp loads the downloaded file; same ids, logits within the stated tolerance of transformers'.
        same, worst, worst_rel = _same_ids_and_logits(folder / gguf_name, merged_dir, prompts)
        assert same, "the tokenizer inside the GGUF splits the prompts otherwise"
        assert worst_rel <= REL_TOLERANCE[gguf_type], (gguf_type, worst, worst_rel)
        if gguf_type == "f16":
            assert worst < F16_MAX_ABS, worst

        # The file alone, resumable: a Range request for its last bytes.
        one = client.get(artifact["download_url"], params={"file": gguf_name}, headers={"Range": "bytes=-64"})
        assert one.status_code == 206 and one.content == (folder / gguf_name).read_bytes()[-64:]

    # The export merged first, once, and said how far it was while it ran.
    merged = [a for a in client.get(f"/api/v1/runs/{run_id}/artifacts").json() if a["kind"] == "merged"]
    assert [a["status"] for a in merged] == ["ready"]
    client_redis = redis.Redis.from_url(gguf_stack.env["REDIS_URL"], decode_responses=True)
    stages = {
        json.loads(fields["data"]).get("details", {}).get("progress", {}).get("stage")
        for _, fields in client_redis.xrange(stream_key(run_id))
        if fields["event"] == "artifact"
    }
    client_redis.close()
    assert {"merging", "converting", "checking"} <= stages, stages


def test_an_export_of_an_unknown_type_or_a_run_without_an_adapter_is_refused(gguf_stack: Stack) -> None:
    client = gguf_stack.client()
    queued = gguf_stack.start_run(name="never trained", method="lora", max_steps=5, worker="nobody@nowhere")
    refused = client.post(f"/api/v1/runs/{queued['id']}/export", json={"type": "q8_0"})
    assert refused.status_code == 409 and "no adapter yet" in refused.json()["detail"]
    wrong = client.post(f"/api/v1/runs/{queued['id']}/export", json={"type": "q3_k"})
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["body", "type"]
    client.post(f"/api/v1/runs/{queued['id']}/cancel")
