"""A merged model folder -> one .gguf for llama.cpp and Ollama, with tokenizer and chat template inside.

The conversion is llama.cpp's own (`worker.export.converter` finds it), run in a child process
(`_gguf_driver.py`): it maps tensor names, permutes Llama's q/k for llama.cpp's rope, folds Gemma's norm
offsets and writes the vocabulary, merges and special tokens exactly as llama.cpp reads them. Its tensors
are lazy views of the memory-mapped safetensors, converted one at a time as they are written, so the
child holds about one tensor plus the page cache the kernel can drop (measured in bench/gguf.py).
f16, bf16 and q8_0 come straight from the converter; q4_k_m is llama.cpp's quantizer (via
llama-cpp-python) run on a full-precision GGUF written first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.schemas import GGUF_TYPES
from worker.export.converter import converter_dir, llama_cpp_version
from worker.export.pretokenizer import effective_pre_tokenizer, llama_cpp_pre_tokenizer

DRIVER = Path(__file__).with_name("_gguf_driver.py")
QUANTIZED = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}  # written by llama.cpp's quantizer from a bf16/f16 GGUF
# The families loradeck trains, each converted and checked end to end at every type (random models of
# tests/worker/families.py's shapes; Gemma 2 and Phi-3 with the SentencePiece tokenizer.model they ship).
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "Llama",
    "MistralForCausalLM": "Mistral",
    "Qwen2ForCausalLM": "Qwen2 / Qwen2.5",
    "Qwen3ForCausalLM": "Qwen3",
    "Gemma2ForCausalLM": "Gemma 2",
    "Phi3ForCausalLM": "Phi-3",
}
# Families whose llama.cpp converter reads the vocabulary from the SentencePiece file only.
NEEDS_SENTENCEPIECE = {"Gemma2ForCausalLM", "Phi3ForCausalLM"}


class ExportError(RuntimeError):
    """The model cannot be exported as asked; the message says why and what to change."""


Progress = Callable[[int, int], None]


def read_architecture(model_dir: Path) -> str:
    """The model's architecture name from config.json, refused unless it is one loradeck exports."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{model_dir} has no config.json; export a merged model folder")
    architectures = json.loads(config_path.read_text()).get("architectures") or ["(none)"]
    if architectures[0] not in SUPPORTED_ARCHITECTURES:
        names = ", ".join(f"{label} ({name})" for name, label in SUPPORTED_ARCHITECTURES.items())
        raise ExportError(f"GGUF export does not support {architectures[0]}; it supports {names}")
    if architectures[0] in NEEDS_SENTENCEPIECE and not (model_dir / "tokenizer.model").is_file():
        label = SUPPORTED_ARCHITECTURES[architectures[0]]
        raise ExportError(
            f"{label}: llama.cpp's converter reads the vocabulary from the SentencePiece file tokenizer.model, "
            f"which {model_dir} lacks; copy it from the base model's folder"
        )
    return str(architectures[0])


def _source_dtype(model_dir: Path) -> str:
    config = json.loads((model_dir / "config.json").read_text())
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def _run_driver(arguments: list[str], progress: Progress | None, done: int = 0, total: int = 0) -> dict[str, Any]:
    """Run the driver, relay its progress, and return its last line; a failure raises with its log's tail."""
    with tempfile.TemporaryFile("w+") as log:
        child = subprocess.Popen(
            [sys.executable, str(DRIVER), *arguments], stdout=subprocess.PIPE, stderr=log, text=True
        )
        assert child.stdout is not None
        last: dict[str, Any] = {}
        try:
            for line in child.stdout:
                last = json.loads(line)
                if progress is not None and "tensor" in last:
                    progress(done + last["tensor"], total or last["of"])
        except BaseException:  # a progress callback that cancels the export stops the child too
            child.kill()
            child.wait()
            raise
        if child.wait() != 0:
            log.seek(0)
            tail = "\n".join(log.read().strip().splitlines()[-12:])
            raise ExportError(f"llama.cpp's {arguments[0]} failed (exit {child.returncode}):\n{tail}")
    return last


def describe_gguf(path: Path) -> dict[str, Any]:
    """Tensor count, tensor types, and the tokenizer settings a GGUF carries (read memory-mapped)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)

    def field(name: str) -> Any:
        found = reader.get_field(name)
        return found.contents() if found is not None else None

    return {
        "tensors": len(reader.tensors),
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors)),
        "gguf_architecture": field("general.architecture"),
        "pre_tokenizer": field("tokenizer.ggml.pre"),
        "add_bos_token": field("tokenizer.ggml.add_bos_token"),
        "has_chat_template": field("tokenizer.chat_template") is not None,
    }


def convert_to_gguf(
    model_dir: Path,
    out_path: Path,
    gguf_type: str,
    *,
    progress: Progress | None = None,
    chat_template: str | None = None,
) -> dict[str, Any]:
    """Write `model_dir` (safetensors + config.json + tokenizer) as one GGUF of `gguf_type` at `out_path`.

    `chat_template` (Jinja) replaces the tokenizer's own in the file: pass the run's chat format.
    Returns tensors, bytes, seconds and the peak RSS of the converting process, with the file's tensor
    types and tokenizer settings.
    """
    if gguf_type not in GGUF_TYPES:
        raise ExportError(f"GGUF type {gguf_type!r} is not offered; choose one of {', '.join(GGUF_TYPES)}")
    architecture = read_architecture(model_dir)
    started = time.perf_counter()
    converter = converter_dir()
    pre = llama_cpp_pre_tokenizer(effective_pre_tokenizer(model_dir))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    # q4_k_m is quantized from a full-precision GGUF: bf16 for a bf16 model (lossless), else f16.
    outtype = ("bf16" if _source_dtype(model_dir) == "bfloat16" else "f16") if gguf_type in QUANTIZED else gguf_type
    full = partial.with_name(out_path.name + f".{outtype}.partial") if gguf_type in QUANTIZED else partial
    with tempfile.TemporaryDirectory() as tmp:
        arguments = ["convert", "--converter-dir", str(converter), "--model-dir", str(model_dir)]
        arguments += ["--outfile", str(full), "--outtype", outtype]
        if pre:
            arguments += ["--pre-tokenizer", pre]
        if chat_template is not None:
            template_file = Path(tmp) / "chat_template.jinja"
            template_file.write_text(chat_template, encoding="utf-8")
            arguments += ["--chat-template-file", str(template_file)]
        try:
            converted = _run_driver(arguments, progress)
            peak = int(converted["peak_rss"])
            if gguf_type in QUANTIZED:
                threads = str(os.cpu_count() or 1)
                quantize = ["quantize", "--infile", str(full), "--outfile", str(partial), "--threads", threads]
                quantized = _run_driver([*quantize, "--ftype", QUANTIZED[gguf_type]], None)
                peak = max(peak, int(quantized["peak_rss"]))
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            if full != partial:
                full.unlink(missing_ok=True)
    partial.replace(out_path)
    described = describe_gguf(out_path)
    if progress is not None:
        progress(described["tensors"], described["tensors"])
    return {
        "gguf_type": gguf_type,
        "architecture": architecture,
        "path": str(out_path),
        "bytes": out_path.stat().st_size,
        "seconds": round(time.perf_counter() - started, 3),
        "peak_rss": peak,
        "llama_cpp_python": llama_cpp_version(),
        **described,
    }
