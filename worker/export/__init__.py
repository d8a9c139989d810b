"""Exports of a run's merged model for other runtimes: GGUF for llama.cpp and Ollama.

- `convert_to_gguf`: merged folder -> one .gguf (f16, bf16, q8_0, q4_k_m) by llama.cpp's own converter.
- `check_gguf`: llama.cpp loads it and must give transformers' token ids and logits (or greedy tokens).
- `modelfile_text` / `validate_modelfile`: the Ollama Modelfile beside it.

`job.py` is the export task's body (merge first, convert, check, Modelfile, checksums); the converter, the
check and the Modelfile writer import nothing else of `worker/` and run in a child process or on plain files.
The chat formats' Ollama templates are written out in `modelfile.py` and tested against `worker.data.chat`'s
Jinja ones. Heavy imports (torch, transformers, llama_cpp, gguf) happen inside the functions.
"""

from worker.export.converter import ConverterMissing, fetch_converter
from worker.export.gguf_check import check_gguf
from worker.export.gguf_convert import GGUF_TYPES, SUPPORTED_ARCHITECTURES, ExportError, convert_to_gguf
from worker.export.modelfile import ModelfileError, modelfile_text, parse_modelfile, validate_modelfile

__all__ = [
    "GGUF_TYPES",
    "SUPPORTED_ARCHITECTURES",
    "ConverterMissing",
    "ExportError",
    "ModelfileError",
    "check_gguf",
    "convert_to_gguf",
    "fetch_converter",
    "modelfile_text",
    "parse_modelfile",
    "validate_modelfile",
]
