"""Merge a PEFT adapter into its base one tensor at a time, in memory bounded by the largest tensor.

The base's safetensors are read tensor by tensor; each weight the adapter changes gets its edits
(computed in fp32, rounded once to the output dtype) and goes straight into an output shard whose
header was planned up front (`worker.merge.safetensors_io`). Nothing ever holds the whole model, so a 70B
merge needs about one embedding matrix plus the adapter. The math is PEFT's (peft/tuners/lora/layer.py,
lora/dora.py, ia3/layer.py); an adapter it cannot reproduce exactly is refused with the reason.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from worker.merge.model_card import copy_companion_files
from worker.merge.safetensors_io import (
    ShardWriter,
    TensorReader,
    TensorSpec,
    model_tensors,
    plan_shards,
    shard_file_names,
    verify_shard,
    write_index,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
OUTPUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
HEAD = "lm_head.weight"
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")
ADAPTER_PREFIX = "base_model.model."
PARTS = {  # adapter key suffix -> its role; the rest of the key is the base module's exact name
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_B.bias": "B_bias",
    ".lora_embedding_A": "embedding_A",
    ".lora_embedding_B": "embedding_B",
    ".lora_magnitude_vector": "magnitude",
    ".lora_magnitude_vector.weight": "magnitude",
    ".ia3_l": "ia3",
}
# LoraConfig fields whose layers compute something other than W + s·BA (or DoRA's rescaling of it).
UNSUPPORTED = {
    "fan_in_fan_out": "it stores weights transposed (GPT-2 style Conv1D layers)",
    "layer_replication": "it duplicates base layers, which changes the model's shape",
    "trainable_token_indices": "trainable tokens are not supported by this merge",
    "target_parameters": "it adapts raw parameters (e.g. MoE experts), not modules",
    "use_qalora": "QALoRA pools inputs before the adapter",
    "alora_invocation_tokens": "activated LoRA only acts after its invocation tokens",
    "arrow_config": "Arrow routes between several adapters per token",
    "use_bdlora": "BD-LoRA is not supported by this merge",
    "velora_config": "VeLoRA is not supported by this merge",
    "monteclora_config": "MonteCLoRA samples its weights",
    "kasa_config": "KaSA is not supported by this merge",
    "megatron_config": "Megatron-parallel layers are not supported by this merge",
}
ADAPTER_FILE = "adapter_model.safetensors"


class UnmergeableAdapter(ValueError):
    """The adapter (or base) cannot be merged into plain weights; the message says why."""


@dataclass(frozen=True)
class Replace:
    """A tensor the adapter carries whole (modules_to_save, trained biases, saved embeddings)."""

    tensor: torch.Tensor

    def apply(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.copy_(self.tensor)


@dataclass(frozen=True)
class AddLora:
    """W + s·BA (embeddings: W + s·(BA)ᵀ), then for DoRA W' = m · W / ‖W‖ per output feature."""

    lora_A: torch.Tensor
    lora_B: torch.Tensor
    scaling: float
    embedding: bool
    magnitude: torch.Tensor | None

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(left, right) with left @ right = BA, or (BA)ᵀ for an embedding, in fp32."""
        a, b = self.lora_A.float(), self.lora_B.float()
        return (a.T, b.T) if self.embedding else (b, a)

    def apply(self, weight: torch.Tensor) -> torch.Tensor:
        weight.addmm_(*self.factors(), alpha=self.scaling)
        if self.magnitude is not None:
            # PEFT's weight norm is taken over W + s·BA per output feature: rows of a Linear weight
            # (out, in), columns of an Embedding weight (vocab, dim).
            dim = 0 if self.embedding else 1
            factor = self.magnitude.float() / torch.linalg.norm(weight, dim=dim)
            weight.mul_(factor.view(1, -1) if self.embedding else factor.view(-1, 1))
        return weight


@dataclass(frozen=True)
class Scale:
    """(IA)³: multiply by a learned vector, shaped (out, 1) for rows or (1, in) for input columns."""

    vector: torch.Tensor

    def apply(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.mul_(self.vector.float().reshape(-1) if weight.ndim == 1 else self.vector.float())


@dataclass(frozen=True)
class AddBias:
    """lora_bias: the LoRA B layer's bias, scaled, adds to the base bias."""

    bias: torch.Tensor
    scaling: float

    def apply(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.add_(self.bias.float(), alpha=self.scaling)


Edit = Replace | AddLora | Scale | AddBias


def merge_adapter_streaming(
    base_dir: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "auto",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    verify: bool = True,
) -> dict[str, Any]:
    """Write base + adapter, merged, to out_dir: safetensors shards (+ index), config.json, generation
    config, tokenizer and licence files. Raises UnmergeableAdapter with the reason when it cannot."""
    started = time.perf_counter()
    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    config = json.loads((base_dir / "config.json").read_text())
    if config.get("quantization_config"):
        raise UnmergeableAdapter(f"the base {base_dir} is stored quantized; merge into a full-precision copy of it")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; merge into a new directory")
    try:
        stored = model_tensors(base_dir)
    except FileNotFoundError as exc:
        raise UnmergeableAdapter(str(exc)) from None
    sources = dict(stored)  # output name -> (file, the stored tensor it is read from)
    specs = {name: spec for name, (_, spec) in stored.items()}
    embedding = tied_embedding(config, specs)
    if embedding and HEAD not in specs:  # stored once, used twice: the head reads the embedding
        specs[HEAD] = TensorSpec(HEAD, specs[embedding].dtype, specs[embedding].shape)
    adapter_config, edits = plan_edits(adapter_dir, specs)
    # Tied weights the adapter touches must be stored apart, or loading would tie them back together.
    untie = embedding is not None and (HEAD in edits or embedding in edits)
    if untie and embedding and HEAD not in sources:
        sources[HEAD] = stored[embedding]

    out_dtype = output_dtype(dtype, config, list(specs.values()))
    out_specs = [
        TensorSpec(name, out_dtype if specs[name].dtype.is_floating_point else specs[name].dtype, specs[name].shape)
        for name in sources
    ]
    shards = plan_shards(out_specs, max_shard_bytes)
    files = shard_file_names(len(shards))
    out_dir.mkdir(parents=True, exist_ok=True)
    digests: dict[str, str] = {}
    scratch = Scratch()
    with TensorReader() as reader:
        for file, shard in zip(files, shards, strict=True):
            with ShardWriter(out_dir / file, shard) as writer:
                for spec in shard:
                    path, source = sources[spec.name]
                    if spec.name in edits:
                        tensor = merge_tensor(reader.get(path, source), edits[spec.name], spec.dtype, scratch)
                        writer.write(spec.name, tensor)
                    else:  # unchanged: copied through in blocks, so not even this tensor is whole in memory
                        writer.write_blocks(spec.name, (block.to(spec.dtype) for block in reader.blocks(path, source)))
                digests[file] = writer.close()
            if verify:
                verify_shard(out_dir / file, shard)
    if len(files) > 1:
        write_index(out_dir, dict(zip(files, shards, strict=True)))

    dtype_name = str(out_dtype).removeprefix("torch.")
    out_config = config | {key: dtype_name for key in ("dtype", "torch_dtype") if key in config or key == "dtype"}
    if untie:
        out_config["tie_word_embeddings"] = False
    (out_dir / "config.json").write_text(json.dumps(out_config, indent=2, sort_keys=True) + "\n")
    copied = copy_companion_files(base_dir, adapter_dir, out_dir)
    seconds = time.perf_counter() - started
    log.info("merged %d of %d tensors into %d shard(s) in %.1f s", len(edits), len(out_specs), len(files), seconds)
    return {
        "dtype": dtype_name,
        "shards": files,
        "sha256": digests,
        "total_size": sum(spec.nbytes for spec in out_specs),
        "tensors": len(out_specs),
        "merged_tensors": len(edits),
        "peft_type": adapter_config["peft_type"],
        "modules_to_save": sorted(adapter_config.get("modules_to_save") or []),
        "untied_embeddings": untie,
        "copied_files": copied,
        "seconds": round(seconds, 3),
    }


class Scratch:
    """Buffers reused from tensor to tensor: fresh ones of ever-changing sizes fragment the heap (and cost
    a page fault per 4 KiB first touched), which bench/merge.py saw as +100 MB of peak memory."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, role: str, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = self._buffers.get(role)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
            self._buffers.pop(role, None)
            del buffer  # the old one goes before the new one comes
            buffer = self._buffers[role] = torch.empty(numel, dtype=dtype)
        return buffer[:numel].view(shape)


def merge_tensor(tensor: torch.Tensor, edits: list[Edit], out_dtype: torch.dtype, scratch: Scratch) -> torch.Tensor:
    """The edited tensor in out_dtype: computed in fp32 whatever the storage, rounded once.

    The result lands in scratch buffers, never in `tensor`: safe_open's tensors map the file copy-on-write,
    so writing into one costs a page copy per 4 KiB (and a bf16 += fp32 in place is slower still)."""
    weight = scratch.take("weight", tensor.shape, torch.float32).copy_(tensor)
    for edit in edits:
        weight = edit.apply(weight)
    return weight if out_dtype == torch.float32 else scratch.take("out", tensor.shape, out_dtype).copy_(weight)


def tied_embedding(config: dict[str, Any], specs: dict[str, TensorSpec]) -> str | None:
    """The input embedding that lm_head is tied to, or None when the two are independent.

    transformers ties them when tie_word_embeddings is true; a config without the flag and a checkpoint
    without a head can only mean tied.
    """
    if not config.get("tie_word_embeddings", HEAD not in specs):
        return None
    embeddings = [name for name in specs if name.endswith(EMBEDDING_SUFFIXES)]
    if len(embeddings) == 1:
        return embeddings[0]
    if HEAD in specs:
        return None  # the head is stored: its own weights are the ones to merge
    raise UnmergeableAdapter(
        f"the base ties {HEAD} to its input embedding but has no single embedding to read it from "
        f"(found: {', '.join(embeddings) or 'none'})"
    )


def output_dtype(name: str, config: dict[str, Any], specs: list[TensorSpec]) -> torch.dtype:
    """The dtype asked for, or for auto the base config's dtype, else the base's stored one."""
    name = DTYPE_ALIASES.get(name, name)
    if name == "auto":
        declared = config.get("dtype") or config.get("torch_dtype")
        if declared in OUTPUT_DTYPES:
            return OUTPUT_DTYPES[declared]
        stored = [spec.dtype for spec in specs if spec.dtype in OUTPUT_DTYPES.values()]
        return stored[0] if stored else torch.float32
    if name not in OUTPUT_DTYPES:
        raise UnmergeableAdapter(f"dtype: {name} is not one of auto, {', '.join(OUTPUT_DTYPES)}")
    return OUTPUT_DTYPES[name]


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's config, refused when it is not an adapter this merge reproduces exactly."""
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise UnmergeableAdapter(f"no adapter_config.json in {adapter_dir}")
    config: dict[str, Any] = json.loads(path.read_text())
    kind = config.get("peft_type")
    if kind not in ("LORA", "IA3"):
        raise UnmergeableAdapter(
            f"peft_type {kind} cannot be merged into the base's weights (only LORA and IA3 adapters can: "
            "prompt-learning methods add virtual tokens, not weight changes); serve it with PEFT instead"
        )
    for field, why in UNSUPPORTED.items():
        if config.get(field):
            raise UnmergeableAdapter(f"the adapter sets {field}={config[field]!r}: {why}, so it cannot be merged")
    if config.get("init_lora_weights") == "mica":
        raise UnmergeableAdapter("the adapter uses the MiCA variant, which this merge does not reproduce")
    return config


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    # peft.utils.other.get_pattern_key: a pattern matches the end of the module name at a dot boundary.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def plan_edits(adapter_dir: Path, specs: dict[str, TensorSpec]) -> tuple[dict[str, Any], dict[str, list[Edit]]]:
    """What the adapter does to each base tensor, keyed by the base tensor's exact name."""
    config = read_adapter_config(adapter_dir)
    if not (adapter_dir / ADAPTER_FILE).is_file():
        raise UnmergeableAdapter(f"no {ADAPTER_FILE} in {adapter_dir}; loradeck reads adapters as safetensors only")
    modules: dict[str, dict[str, torch.Tensor]] = {}
    edits: dict[str, list[Edit]] = {}
    for key, tensor in load_file(adapter_dir / ADAPTER_FILE).items():
        if not key.startswith(ADAPTER_PREFIX):
            raise UnmergeableAdapter(f"adapter tensor {key} is not under {ADAPTER_PREFIX}; it is not a LoRA/IA3 weight")
        name = key.removeprefix(ADAPTER_PREFIX)
        suffix = next((s for s in PARTS if name.endswith(s)), None)
        if suffix:
            modules.setdefault(name.removesuffix(suffix), {})[PARTS[suffix]] = tensor
            continue
        # A whole tensor (modules_to_save, bias="all", saved embeddings) replaces the base's; PEFT's wrapper
        # infixes are dropped to find the base name, which must then match exactly.
        target = re.sub(r"\.(base_layer|modules_to_save)\.", ".", name)
        _check_shape(key, tensor, specs, target)
        edits.setdefault(target, []).append(Replace(tensor))  # before any delta: modules are added below
    for module, parts in modules.items():
        for edit_target, edit in _module_edits(config, module, parts, specs):
            edits.setdefault(edit_target, []).append(edit)
    return config, edits


def _check_shape(key: str, tensor: torch.Tensor, specs: dict[str, TensorSpec], target: str) -> TensorSpec:
    if target not in specs:
        raise UnmergeableAdapter(f"adapter tensor {key} changes {target}, which the base does not have")
    if tuple(tensor.shape) != specs[target].shape:
        raise UnmergeableAdapter(
            f"adapter tensor {key} has shape {tuple(tensor.shape)} but the base's {target} is {specs[target].shape} "
            "(a resized vocabulary or a different base model)"
        )
    return specs[target]


def _module_edits(
    config: dict[str, Any], module: str, parts: dict[str, torch.Tensor], specs: dict[str, TensorSpec]
) -> list[tuple[str, Edit]]:
    weight_key, bias_key = f"{module}.weight", f"{module}.bias"
    if weight_key not in specs:
        raise UnmergeableAdapter(f"the adapter changes {module}, but the base has no {weight_key}")
    weight = specs[weight_key]
    if len(weight.shape) != 2:
        raise UnmergeableAdapter(
            f"the adapter changes {module}, whose weight is {len(weight.shape)}-d; only linear and embedding "
            "layers can be merged (not convolutions)"
        )
    if "ia3" in parts:
        vector = parts["ia3"]
        out_rows = tuple(vector.shape) == (weight.shape[0], 1)
        if not out_rows and tuple(vector.shape) != (1, weight.shape[1]):
            raise UnmergeableAdapter(f"(IA)³ vector of {module} is {tuple(vector.shape)}; its weight is {weight.shape}")
        # Feed-forward layers scale their input columns; the others scale output rows, and so their bias too.
        bias = [(bias_key, Scale(vector))] if out_rows and bias_key in specs else []
        return [(weight_key, Scale(vector)), *bias]
    embedding = "embedding_A" in parts
    lora_A, lora_B = parts.get("embedding_A" if embedding else "A"), parts.get("embedding_B" if embedding else "B")
    if lora_A is None or lora_B is None:
        raise UnmergeableAdapter(f"the adapter has only part of LoRA A/B for {module}: {', '.join(sorted(parts))}")
    r = _pattern_value(config.get("rank_pattern") or {}, module, config["r"])
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    delta_shape = (lora_A.shape[1], lora_B.shape[0]) if embedding else (lora_B.shape[0], lora_A.shape[1])
    if lora_A.shape[0] != r or lora_B.shape[1] != r or delta_shape != weight.shape:
        raise UnmergeableAdapter(
            f"LoRA weights of {module} (A {tuple(lora_A.shape)}, B {tuple(lora_B.shape)}) do not fit rank {r} "
            f"and the base's {weight_key} {weight.shape}"
        )
    magnitude = parts.get("magnitude")
    if magnitude is not None and tuple(magnitude.shape) != (weight.shape[1] if embedding else weight.shape[0],):
        raise UnmergeableAdapter(
            f"DoRA magnitude of {module} is {tuple(magnitude.shape)}; its weight is {weight.shape}"
        )
    edits: list[tuple[str, Edit]] = [(weight_key, AddLora(lora_A, lora_B, scaling, embedding, magnitude))]
    if "B_bias" in parts:
        if bias_key not in specs:
            raise UnmergeableAdapter(f"the adapter trains a LoRA bias for {module}, but the base layer has no bias")
        edits.append((bias_key, AddBias(parts["B_bias"], scaling)))
    return edits
