"""Prove an exported GGUF before it is offered: llama.cpp itself loads it and must agree with transformers.

Three checks on the run's own prompts:
- tokens: the tokenizer inside the GGUF (llama.cpp's) gives the ids the merged model's HF tokenizer gives;
  a difference is reported prompt by prompt, with the first id where they part.
- logits (f16, bf16, q8_0): on the same ids, llama.cpp's logits and transformers' (fp32, on the merged
  weights as saved) differ by at most the type's tolerance, relative to each position's spread of logits
  (see TOLERANCES for the measured reasons); the largest absolute difference is reported beside it.
- greedy (4-bit): transformers' greedy continuation, fed to llama.cpp as given, is what llama.cpp picks
  at the steps where transformers' choice is clear (not a near-tie); quantizing to 4 bits moves logits by
  far more than a tolerance means. Where the two first part is the length of the answer they share.

transformers runs first and is freed before llama.cpp loads, so the check holds one copy of the model.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import numpy as np

from worker.export.converter import INSTALL_HINT, ConverterMissing

# Largest |logit difference| allowed, per type, in units of the position's logit spread (std over the
# vocabulary). Measured (README: Export for llama.cpp and Ollama) on the bundled model's 201 eval rows and on
# random Llama, Mistral, Qwen2, Qwen3, Gemma 2 and Phi-3 shapes, the largest seen was f16 0.0067, bf16 0.065, q8_0 0.32,
# all from rounding: the weights rounded to the type alone, in transformers, already give 0.0056, 0.045 and
# 0.23; llama.cpp also rounds activations to the weights' type. Each tolerance is about twice the largest
# seen. Conversion errors measured on the bundled model: q/k not permuted for llama.cpp's rope 13.6, the
# final norm 5% off 0.61 (so q8_0's tolerance only just tells that one from rounding; f16's by 30x).
TOLERANCES = {"f16": 0.02, "bf16": 0.15, "q8_0": 0.6}
# Positions judged per prompt, as the merge check cuts its prompts: the check is about the weights, and
# transformers' fp32 logits of every prompt are held until llama.cpp's are in (tokens x vocabulary x 4 bytes).
CHECK_TOKENS = 256
MIN_SPREAD = 1e-3  # a row of (nearly) equal logits is judged against this spread, not against zero
GREEDY_TOKENS = 16  # continuation length judged for 4-bit types
# A step is judged only where transformers' choice is clear: its top logit leads the next by at least this
# share of the row's spread. Below it the two choices are a near-tie that any rounding may flip (bundled
# model, q4_k_m: every disagreement had a lead under 0.1 spread; with a lead of 0.1 or more, 100% agree).
NEAR_TIE = 0.1
# Share of those clear steps where llama.cpp picks transformers' token. Measured: the bundled model 0.9993
# (200 prompts x 16 tokens; 0.989 counting near-ties), random Llama/Mistral/Qwen2/Qwen3/Gemma 2/Phi-3
# shapes 0.976 to 1.0, a random 498M Llama 0.46: 4-bit rounding moves its near-flat logits by 1.6
# spreads (median), so such a file does not keep that model's choices, and the check says so.
GREEDY_AGREEMENT = 0.9


def _hf_side(model_dir: Path, prompts: list[str], greedy_tokens: int) -> tuple[list[list[int]], list[Any]]:
    """HF token ids of each prompt and, per prompt, the fp32 logits of its first CHECK_TOKENS; or, with
    greedy_tokens, the greedy continuation of those and the logits row that chose each of its ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    ids = [list(tokenizer(prompt)["input_ids"]) for prompt in prompts]
    answers: list[Any] = []
    with torch.inference_mode():
        for prompt_ids in ids:
            out = model(torch.tensor([prompt_ids[:CHECK_TOKENS]]), use_cache=bool(greedy_tokens))
            if not greedy_tokens:
                answers.append(out.logits[0].float().numpy())
                continue
            continuation: list[int] = []
            rows = []
            for _ in range(greedy_tokens):  # no stop at eos: the check is about the function, not the answer
                rows.append(out.logits[0, -1].float().numpy())
                continuation.append(int(rows[-1].argmax()))
                out = model(torch.tensor([[continuation[-1]]]), cache=out.cache, use_cache=True)
            answers.append((continuation, np.stack(rows)))
    del model
    gc.collect()
    return ids, answers


def _spread(rows: np.ndarray) -> np.ndarray:
    return np.maximum(rows.std(axis=-1), MIN_SPREAD)


def _load_llama(gguf_path: Path, n_ctx: int) -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise ConverterMissing(f"llama-cpp-python is needed to check a GGUF; install it with: {INSTALL_HINT}") from None
    threads = os.cpu_count() or 1
    # The KV cache in fp32: llama.cpp's default f16 cache alone moves the bundled model's logits by 1.2e-2
    # (an f32 GGUF: 2e-5 with an f32 cache), which would hide what the file itself does.
    f32 = llama_cpp.GGML_TYPE_F32
    return llama_cpp.Llama(
        str(gguf_path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        logits_all=True,
        n_threads=threads,
        type_k=f32,
        type_v=f32,
        verbose=False,
    )


def _first_difference(ours: list[int], theirs: list[int]) -> int:
    return next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))


def _compare_logits(llm: Any, hf_ids: list[list[int]], hf_logits: list[np.ndarray]) -> dict[str, Any]:
    """Largest |logit difference|, absolute and relative to each position's spread, and top-1 agreement."""
    worst, worst_rel, agree, total = 0.0, 0.0, 0, 0
    for ids, expected in zip(hf_ids, hf_logits, strict=True):
        llm.reset()
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)], dtype=np.float32)
        if got.shape != expected.shape:
            raise ValueError(f"llama.cpp gave logits of shape {got.shape}, transformers {expected.shape}")
        difference = np.abs(got - expected).max(axis=-1)
        worst = max(worst, float(difference.max()))
        # Relative to each position's spread: rounding a weight moves a logit in proportion to the logits'
        # own size, so this is what a type's tolerance can be stated in for any model.
        worst_rel = max(worst_rel, float((difference / _spread(expected)).max()))
        agree += int((got.argmax(-1) == expected.argmax(-1)).sum())
        total += len(ids)
    return {"max_abs_logit_diff": worst, "max_rel_logit_diff": worst_rel, "top1_agreement": agree / total}


def _compare_greedy(llm: Any, hf_ids: list[list[int]], hf_answers: list[Any]) -> dict[str, Any]:
    """llama.cpp's choices along transformers' greedy continuation (teacher-forced), judged on clear steps."""
    picked, wanted, clear, prefix, worst_rel = [], [], [], [], 0.0
    for ids, (continuation, rows) in zip(hf_ids, hf_answers, strict=True):
        llm.reset()
        llm.eval(ids + continuation[:-1])  # each step sees transformers' tokens before it
        got = np.array(llm.scores[len(ids) - 1 : len(ids) - 1 + len(continuation)], dtype=np.float32)
        top_two = np.sort(rows, axis=-1)[:, -2:]
        clear.append((top_two[:, 1] - top_two[:, 0]) / _spread(rows) >= NEAR_TIE)
        picked.append(got.argmax(-1))
        wanted.append(np.array(continuation))
        # Where they first part is the greedy answer both would give (free-running, they agree until then).
        prefix.append(_first_difference([int(p) for p in picked[-1]], continuation))
        worst_rel = max(worst_rel, float((np.abs(got - rows).max(axis=-1) / _spread(rows)).max()))
    same, judged = np.concatenate(picked) == np.concatenate(wanted), np.concatenate(clear)
    return {
        "greedy_agreement": float(same[judged].mean()) if judged.any() else 0.0,
        "greedy_agreement_all_steps": float(same.mean()),
        "clear_steps": float(judged.mean()),
        "threshold": GREEDY_AGREEMENT,
        "greedy_same_prefix": prefix,
        "max_rel_logit_diff": worst_rel,
    }


def check_gguf(gguf_path: Path, model_dir: Path, prompts: list[str], gguf_type: str) -> dict[str, Any]:
    """Load the GGUF with llama.cpp and compare it with transformers on `prompts`; `passed` says if it may ship.

    Returns per-prompt token parity, and the max |logit diff| with its tolerance (f16, bf16, q8_0) or the
    greedy agreement with its threshold (4-bit types).
    """
    if not prompts:
        raise ValueError("check_gguf needs at least one prompt")
    greedy = GREEDY_TOKENS if gguf_type not in TOLERANCES else 0
    hf_ids, hf_answers = _hf_side(model_dir, prompts, greedy)
    judged = [ids[:CHECK_TOKENS] for ids in hf_ids]  # the positions whose logits transformers kept
    llm = _load_llama(gguf_path, n_ctx=max(len(ids) for ids in judged) + greedy + 1)
    tokens = []
    for prompt, ids in zip(prompts, hf_ids, strict=True):
        gguf_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        same = gguf_ids == ids
        tokens.append({"same": same, "hf": len(ids), "gguf": len(gguf_ids)})
        if not same:
            at = _first_difference(ids, gguf_ids)
            tokens[-1].update(first_difference=at, hf_ids=ids[at : at + 4], gguf_ids=gguf_ids[at : at + 4])
    positions = sum(len(ids) for ids in judged)
    result: dict[str, Any] = {"gguf_type": gguf_type, "prompts": len(prompts), "positions": positions, "tokens": tokens}
    result["tokens_same"] = all(entry["same"] for entry in tokens)
    if greedy:
        result.update(_compare_greedy(llm, judged, hf_answers))
        result["passed"] = result["tokens_same"] and result["greedy_agreement"] >= GREEDY_AGREEMENT
    else:
        result.update(_compare_logits(llm, judged, hf_answers), tolerance=TOLERANCES[gguf_type])
        result["passed"] = result["tokens_same"] and result["max_rel_logit_diff"] <= TOLERANCES[gguf_type]
    del llm
    gc.collect()
    return result
