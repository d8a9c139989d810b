"""What the web must know of PEFT's defaults to refuse a run before it is queued, without importing PEFT.

(IA)³ needs to know which of its target modules are feed-forward layers (their inputs are scaled, not
their outputs). PEFT has that list for some architectures only (`peft.utils.constants.
TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING`); for any other, such as Phi-3 with its fused
`qkv_proj` and `gate_up_proj`, it refuses a config that does not name them. The model types below are that
mapping's keys (tests/worker/test_families.py holds the copy equal to the installed PEFT), and a model's
type is read from its config.json, which is plain JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

IA3_DEFAULT_MODEL_TYPES = frozenset(
    {
        "RefinedWeb",
        "RefinedWebModel",
        "bart",
        "bert",
        "bloom",
        "deberta",
        "deberta-v2",
        "falcon",
        "gemma",
        "gemma2",
        "gemma3_text",
        "gpt2",
        "gpt_bigcode",
        "gpt_neo",
        "gpt_neox",
        "gptj",
        "llama",
        "llama4",
        "mistral",
        "mixtral",
        "mt5",
        "opt",
        "phi",
        "qwen2",
        "qwen3",
        "roberta",
        "t5",
    }
)


def model_type(base_model: str) -> str | None:
    """config.json's model_type of a local model directory; None for a hub id or an unreadable config."""
    path = Path(base_model) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = config.get("model_type") if isinstance(config, dict) else None
    return kind if isinstance(kind, str) else None


def ia3_feedforward_refusal(kind: str) -> str:
    """Why an (IA)³ run on an architecture without PEFT defaults needs feedforward_modules, naming the fields."""
    return (
        f"feedforward_modules: PEFT has no default (IA)³ modules for model type {kind}, so it refuses the run "
        "unless they are named: set target_modules to the layers to scale and feedforward_modules to those of "
        "them that are feed-forward layers (for Phi-3: target_modules qkv_proj, down_proj and "
        "feedforward_modules down_proj)"
    )
