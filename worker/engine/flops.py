"""Model FLOPs per trained token, the GPUs' peak bf16 FLOPS, and MFU: arithmetic only, no torch, so the web-free
benchmark plan (bench/gpu/plan.py) and the training callback (worker.engine.hardware) share one formula.

FLOPs per trained token, LoRA (frozen base; "model FLOPs", so recomputation by gradient checkpointing and
QLoRA's dequantization are not counted, as MFU is defined):

    4 * N            the base's matmuls: forward 2N, backward for the activations' gradients 2N (no weight
                     gradients: the base is frozen; full fine-tuning would be 6N)
  + 6 * N_lora       the adapters: forward, activation and weight gradients (N_lora is ~0.1-0.5% of N)
  + 12 * L * d * T   attention scores and their weighted sum (QK^T and AV, 2 * 2 * d * T a layer forward,
                     twice that backward), d = heads * head_dim, T the sequence's tokens; PaLM's convention
                     (no discount for the causal mask), T the mean trained row length (packing keeps attention
                     within each example, so the example's length, not the packed row's)

N counts the linear layers' weights (q, k, v, o, gate, up, down in every layer, and lm_head), not the
embedding (a lookup) nor the norms. The shapes are a dense Llama-style decoder's config (Llama, Qwen, Gemma,
Mistral name them alike); a config without them, or a mixture of experts, has no formula here: no MFU.
Preference objectives' reference forward pass (DPO, KTO) is not counted: their MFU reads low by up to 1/3.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Peak dense bf16 tensor FLOPS (FP32 accumulate, no sparsity), from the vendors' datasheets: H100 SXM5 and
# H200 989.4 TFLOPS (the datasheets' 1,979 is with 2:4 sparsity), H100 PCIe 756, H100 NVL 835, A100 312,
# L40S 362.05 (733 with sparsity), RTX 4090 165.2 (with FP32 accumulate; 330 with FP16 accumulate).
# Checked in order: the first name fragment found in torch.cuda.get_device_name() wins. Unknown: no MFU.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989e12),
    ("H100", 989e12),  # "NVIDIA H100 80GB HBM3": the SXM part
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("RTX 4090", 165e12),
)

# What a dense decoder's config must name for the formula (head_dim is optional: hidden_size / heads).
SHAPE_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
)
# Any of these in a config means experts: per-token FLOPs depend on routing the formula does not model.
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size")


def _head_dim(shapes: Mapping[str, Any]) -> int:
    return int(shapes.get("head_dim") or shapes["hidden_size"] // shapes["num_attention_heads"])


def linear_params(shapes: Mapping[str, Any]) -> int:
    """Weights of the linear layers of a Llama of these shapes (lm_head included, embedding excluded)."""
    d, layers, ffn = shapes["hidden_size"], shapes["num_hidden_layers"], shapes["intermediate_size"]
    q = shapes["num_attention_heads"] * _head_dim(shapes)
    kv = shapes["num_key_value_heads"] * _head_dim(shapes)
    attention = d * q + 2 * d * kv + q * d
    mlp = 3 * d * ffn
    return int(layers * (attention + mlp) + d * shapes["vocab_size"])


def lora_params(shapes: Mapping[str, Any], r: int) -> int:
    """LoRA's A and B for every linear layer of every block (all-linear: lm_head is left out, as peft does)."""
    d, ffn = shapes["hidden_size"], shapes["intermediate_size"]
    q = shapes["num_attention_heads"] * _head_dim(shapes)
    kv = shapes["num_key_value_heads"] * _head_dim(shapes)
    pairs = [(d, q), (d, kv), (d, kv), (q, d), (d, ffn), (d, ffn), (ffn, d)]
    return int(shapes["num_hidden_layers"] * sum(r * (i + o) for i, o in pairs))


def flops_per_token(shapes: Mapping[str, Any], seq_len: float, r: int = 8, *, trainable: int | None = None) -> float:
    """Model FLOPs per trained token for LoRA (see the module's docstring for the formula). `trainable`: the
    adapter's real parameter count (a run's own target modules and rank); without it, all-linear LoRA of rank r."""
    adapters = lora_params(shapes, r) if trainable is None else trainable
    attention = 12 * shapes["num_hidden_layers"] * shapes["num_attention_heads"] * _head_dim(shapes) * seq_len
    return float(4 * linear_params(shapes) + 6 * adapters + attention)


def dense_shapes(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The decoder's shapes from a model's config (a multimodal config's `text_config` for its language model);
    None where the formula does not apply (names missing, or experts)."""
    text = config.get("text_config")
    if isinstance(text, Mapping):
        config = text
    if any(config.get(key) for key in EXPERT_KEYS):
        return None
    shapes: dict[str, Any] = {key: config.get(key) for key in (*SHAPE_KEYS, "head_dim")}
    if shapes["num_key_value_heads"] is None:  # older configs: no grouped-query attention
        shapes["num_key_value_heads"] = shapes["num_attention_heads"]
    if not all(isinstance(shapes[key], int) and shapes[key] > 0 for key in SHAPE_KEYS):
        return None
    return shapes


def peak_flops(gpu: str | None) -> float | None:
    """The GPU's peak dense bf16 FLOPS from PEAK_BF16_FLOPS; None for a GPU not in it (and the CPU)."""
    if not gpu:
        return None
    for fragment, flops in PEAK_BF16_FLOPS:
        if fragment.lower() in gpu.lower():
            return flops
    return None


def mfu(tokens_per_s: float | None, flops_per_token: float | None, peak: float | None, gpus: int = 1) -> float | None:
    """Model FLOPs utilisation, 0..1: FLOPs per token x tokens/s over the peak of the `gpus` GPUs the tokens were
    trained on; None where any of them is unknown (the CPU, a GPU not in the table, a shape without a formula)."""
    if not tokens_per_s or not flops_per_token or not peak or gpus < 1:
        return None
    return tokens_per_s * flops_per_token / (peak * gpus)
