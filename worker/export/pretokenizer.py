"""Which llama.cpp pre-tokenizer (tokenizer.ggml.pre) splits text as a model's Hugging Face tokenizer does.

llama.cpp knows a BPE tokenizer's pre-tokenizer by the hash of its ids on a fixed text (the converter's
get_vocab_base_pre): right for the published families, never for a tokenizer trained here (the bundled
model's, the test families'), whose hash nobody listed. For those the export names the pre-tokenizer from
the split rules themselves. llama.cpp applies its regexes in sequence, as `tokenizers` applies a Sequence
of pre-tokenizers, so a rule list maps to a name when the rules are the same.

The rules read are the ones transformers actually applies, not tokenizer.json's: for a Qwen2 config,
AutoTokenizer loads Qwen2Tokenizer, which replaces a saved plain ByteLevel pre-tokenizer with Qwen2's own
regex (measured with transformers 5.24 on tests/worker/families.py's Qwen2: digits then split one by one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Han characters, as the bundled tokenizer's first step isolates them (tools/tiny_model.py).
HAN = "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
# The regexes of tokenizer.json files llama.cpp implements (src/llama-vocab.cpp gives each as "original regex").
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3 = _CONTRACTIONS + r"\p{N}{1,3}|" + _REST  # digits in threes
QWEN2 = _CONTRACTIONS + r"\p{N}|" + _REST  # digits one by one
SPLITS = {HAN: "han", LLAMA3: "llama3-regex", QWEN2: "qwen2-regex"}
NAMES = {
    ("bytelevel-regex",): "gpt-2",
    ("digits", "bytelevel-regex"): "starcoder",
    # No llama.cpp pre-tokenizer isolates Han characters; "starcoder" keeps a run of them as one piece, which
    # gives the same ids because no token of the bundled vocabulary joins a Han character with anything
    # (they were isolated in training), so BPE cannot merge across them. The export's check measures it.
    ("han", "digits", "bytelevel-regex"): "starcoder",
    ("llama3-regex", "bytelevel"): "llama-bpe",
    ("qwen2-regex", "bytelevel"): "qwen2",
}


def _rule(step: dict[str, Any]) -> str | None:
    kind = step.get("type")
    if kind == "ByteLevel" and not step.get("add_prefix_space", False):
        return "bytelevel-regex" if step.get("use_regex", True) else "bytelevel"
    if kind == "Digits" and step.get("individual_digits"):
        return "digits"
    if kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
        return SPLITS.get(step.get("pattern", {}).get("Regex", ""))
    return None


def llama_cpp_pre_tokenizer(pre_tokenizer: dict[str, Any] | None) -> str | None:
    """The llama.cpp name for a `tokenizers` pre-tokenizer (its JSON form); None when none splits the same."""
    if not pre_tokenizer:
        return None
    steps = pre_tokenizer.get("pretokenizers", []) if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    rules = tuple(_rule(step) for step in steps)
    return None if None in rules else NAMES.get(rules)  # type: ignore[arg-type]


def effective_pre_tokenizer(model_dir: Path) -> dict[str, Any] | None:
    """The pre-tokenizer transformers applies for this model folder, as JSON; None for a SentencePiece one."""
    from transformers import AutoTokenizer

    backend = getattr(AutoTokenizer.from_pretrained(model_dir), "backend_tokenizer", None)
    if backend is None:
        return None
    found = json.loads(backend.to_str()).get("pre_tokenizer")
    return dict(found) if found else None
