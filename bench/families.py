"""The README's table of supported families and methods, from what the family matrix measured.

    LORADECK_FAMILY_RESULTS=bench/results/families.json .venv/bin/python -m pytest tests/worker/test_families.py
    .venv/bin/python -m bench.families          # rewrites the table in README.md

tests/worker/test_families.py writes the JSON (estimate vs PEFT, the loss mask, the training losses, every
merge's largest logit difference beside PEFT's own merge_and_unload); this renders it, and
tests/test_family_table.py checks that the README shows exactly this rendering.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "families.json"
README = ROOT / "README.md"
START, END = "<!-- families -->", "<!-- /families -->"

FAMILIES = {  # name in the matrix -> (as the table names it, the quirks its tiny model has)
    "llama": ("Llama 3", "Llama 3 chat format"),
    "qwen2": ("Qwen2 / 2.5", "q/k/v biases, tied embeddings, ChatML with a default system turn"),
    "qwen3": ("Qwen3", "q/k norms, ChatML with think blocks"),
    "mistral": ("Mistral", "[INST] format, no system role"),
    "gemma2": ("Gemma 2", "tied and scaled embeddings, soft-capping, `model` turns"),
    "phi3": ("Phi-3", "fused qkv_proj and gate_up_proj, eos after the conversation"),
}
ESTIMATES = {  # key in the results -> as the table names it
    "lora": "LoRA",
    "dora": "DoRA",
    "modules_to_save": "modules_to_save",
    "ia3": "(IA)³",
    "prompt_tuning": "prompt tuning",
}
MERGES = ("lora", "dora", "ia3", "lm_head", "embed_tokens", "modules_to_save")


def _estimate(row: dict[str, Any]) -> str:
    cells = []
    for key, label in ESTIMATES.items():
        value = row[f"estimate/{key}"]
        cells.append(f"{label} {value:,}" if isinstance(value, int) else f"{label} {value.replace(': ', ' (`')}`)")
    return "; ".join(cells)


def _training(row: dict[str, Any]) -> str:
    parts = []
    for method in ("lora", "qlora"):
        run = row[f"train/{method}"]
        parts.append(f"{method} {run['first_loss']:.2f} → {run['last_loss']:.2f}")
    return ", ".join(parts)


def _merges(row: dict[str, Any]) -> tuple[str, str]:
    ours = [row[f"merge/{m}"]["loradeck"] for m in MERGES]
    ours += [row[f"train/{m}"]["merge_diff"] for m in ("lora", "qlora")]
    ours += [row[key]["loradeck"] for key in row if key == "train/lora lm_head"]
    wrong = {m: row[f"merge/{m}"]["peft"] for m in MERGES if row[f"merge/{m}"]["peft"] >= 1e-4}
    if "train/lora lm_head" in row:
        wrong["trained lm_head"] = row["train/lora lm_head"]["peft"]
    peft = ", ".join(f"{name} {diff:.2g}" for name, diff in wrong.items()) if wrong else "agrees (< 1e-4)"
    return f"{max(ours):.1g}", peft


def render(results: dict[str, dict[str, Any]]) -> str:
    """The markdown table, one row per family."""
    lines = [
        "| family | its tiny model has | trainable params: estimate = PEFT | `messages` loss mask "
        "| 6 training steps, loss | merge vs adapter-on-base (worst, fp32) | PEFT's `merge_and_unload` off by |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, (label, quirks) in FAMILIES.items():
        row = results[name]
        ours, peft = _merges(row)
        cells = [label, quirks, _estimate(row), row["mask"], _training(row), ours, peft]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def readme_table(readme: str) -> str:
    """The table as the README holds it now (between the markers)."""
    start, end = readme.index(START) + len(START), readme.index(END)
    return readme[start:end].strip("\n") + "\n"


def main() -> None:
    table = render(json.loads(RESULTS.read_text(encoding="utf-8")))
    readme = README.read_text(encoding="utf-8")
    start, end = readme.index(START) + len(START), readme.index(END)
    README.write_text(readme[:start] + "\n" + table + readme[end:], encoding="utf-8")
    sys.stdout.write(table)


if __name__ == "__main__":
    main()
