"""The merged directory's files besides the weights: what it carries on from the base (tokenizer,
generation config, licence), its model card, and SHA256SUMS so a download can be checked with
`sha256sum -c SHA256SUMS`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from app.archive import file_sha256

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
)
# Generation defaults, and the licence terms a redistributed base (Llama, Gemma, ...) must ship with.
BASE_FILES = ("generation_config.json", "LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE", "USE_POLICY.md")
SUMS_FILE = "SHA256SUMS"
ADAPTER_FIELDS = (
    "peft_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "use_rslora",
    "use_dora",
    "target_modules",
    "feedforward_modules",
    "modules_to_save",
    "rank_pattern",
    "alpha_pattern",
    "bias",
)


def copy_companion_files(base_dir: Path, adapter_dir: Path, out_dir: Path) -> list[str]:
    """Copy generation config and licence from the base, and the tokenizer from the adapter dir when
    training saved one there (it may have added tokens or a chat template), else from the base."""
    has_tokenizer = any((adapter_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer_dir = adapter_dir if has_tokenizer else base_dir
    copied = []
    for source_dir, names in ((base_dir, BASE_FILES), (tokenizer_dir, TOKENIZER_FILES)):
        for name in names:
            if (source_dir / name).is_file():
                shutil.copyfile(source_dir / name, out_dir / name)
                copied.append(name)
    return copied


def write_sha256sums(root: Path, known: dict[str, str] | None = None) -> Path:
    """SHA256SUMS in sha256sum's format for every file below root but itself; `known` digests (the
    shards, hashed while they were written) are used as they are instead of reading the file again."""
    known = known or {}
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        name = path.relative_to(root).as_posix()
        if name != SUMS_FILE:
            lines.append(f"{known.get(name) or file_sha256(path)}  {name}\n")
    sums = root / SUMS_FILE
    sums.write_text("".join(lines))
    return sums


# The base shares one matrix between its input embedding and lm_head; the adapter changed one of them.
UNTIED_NOTE = (
    "Note: the merge untied the embeddings. The base shares one matrix between its input embedding and "
    "`lm_head` (`tie_word_embeddings`), and the adapter changed only one of them, so this model stores both "
    "and its config.json says `tie_word_embeddings: false`; it is larger than the base by one vocabulary-"
    "sized matrix. (PEFT's own `merge_and_unload()` writes the change into the shared matrix, which changes "
    "the other use too.)"
)


def _loss(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "–"


def render_model_card(
    *,
    spec: dict[str, Any],
    adapter_config: dict[str, Any],
    steps: int,
    train_loss: float | None,
    eval_loss: float | None,
    check: dict[str, Any],
) -> str:
    """README.md of the merged model: where it comes from, how it was trained, and how it was checked."""
    base = str(spec.get("base_model", ""))
    hub_base = "/" in base and not base.startswith(("/", ".")) and base.count("/") == 1
    front = ["---", "library_name: transformers", "tags: [loradeck, peft, merged]"]
    if hub_base:
        front.append(f"base_model: {base}")
    front.append("---")
    adapter_rows = [
        f"| {field} | `{adapter_config[field]}` |"
        for field in ADAPTER_FIELDS
        if adapter_config.get(field) not in (None, [], {}, "")
    ]
    lines = [
        *front,
        "",
        f"# {spec.get('name') or 'merged model'}",
        "",
        f"`{Path(base).name if not hub_base else base}` with a {spec.get('method', 'PEFT')} adapter trained by "
        "loradeck, merged into its weights. It loads with plain transformers, no PEFT needed:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder", dtype="auto")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        "```",
        "",
        "## Training",
        "",
        "| | |",
        "| --- | --- |",
        f"| base model | `{base}` |",
        f"| method | {spec.get('method')} |",
        *adapter_rows,
        f"| dataset | `{Path(str(spec.get('dataset', ''))).name}` |",
        f"| steps | {steps} |",
        f"| learning rate | {spec.get('learning_rate')} |",
        f"| final train loss | {_loss(train_loss)} |",
        f"| final eval loss | {_loss(eval_loss)} |",
        "",
        "## Merge check",
        "",
        f"Saved in {check['dtype']} as {len(check['shards'])} safetensors file(s). Before the download opened, "
        f"{len(check['prompts'])} prompts from the training data ran through this model and through the adapter "
        "on its base (both in fp32):",
        "",
        f"- largest logit difference, merged vs adapter-on-base: {check['max_abs_diff']:.3g}, "
        f"{check['max_rel_diff']:.3g} of that position's logit spread (allowed in {check['dtype']}: "
        f"{check['rel_tolerance']:.3g})",
        f"- same most likely next token at {100 * check['top1_agreement']:.1f}% of positions; largest KL "
        f"divergence {check['max_kl']:.3g} nats",
        f"- largest logit difference, merged vs base: {check['base_diff']:.3g} (the adapter changes the model)",
        "",
        "Verify the files with `sha256sum -c SHA256SUMS`.",
    ]
    if check.get("untied_embeddings"):
        lines += ["", UNTIED_NOTE]
    if not check.get("vllm_lora_compatible", True):
        lines += ["", f"Note: the adapter itself cannot be served as a vLLM LoRA: {check['vllm_reason']}."]
    return "\n".join(lines) + "\n"
