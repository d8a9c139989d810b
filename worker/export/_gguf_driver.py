"""Runs in a child process: llama.cpp's own HF -> GGUF converter, or its quantizer, with progress lines.

Started by `worker.export.gguf_convert` as `python _gguf_driver.py convert|quantize ...`, never imported by
the worker. A child keeps three things out of the worker: the converter's own copy of `gguf` (newer than
the one on PyPI under the same version number, and it must win on sys.path), a C abort inside llama.cpp's
quantizer (it would take the Celery worker down with it), and the converter's memory (freed when it exits,
and measured on its own as this process's peak RSS).

Standard output carries one JSON object a line: {"tensor": i, "of": n} per tensor written, then
{"done": true, "peak_rss": bytes}. Everything else (the converter's log) goes to standard error.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
from pathlib import Path
from typing import Any


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class _ReportingTensor:
    """Stands in for a tensor the GGUF writer is about to write, and reports when it is written."""

    def __init__(self, inner: Any, index: int, total: int) -> None:
        self.inner, self.index, self.total = inner, index, total
        self.nbytes = inner.nbytes

    def tofile(self, fout: Any) -> None:
        self.inner.tofile(fout)  # a lazy tensor is read (memory-mapped) and converted only here
        self.inner = None
        _emit(tensor=self.index, of=self.total)


def _convert(args: argparse.Namespace) -> None:
    sys.path[0] = str(args.converter_dir)  # in place of this script's folder, whose modules must not shadow
    sys.argv = [
        "convert_hf_to_gguf.py",
        str(args.model_dir),
        "--outfile",
        str(args.outfile),
        "--outtype",
        args.outtype,
    ]
    import convert_hf_to_gguf  # puts the converter's own gguf-py first on sys.path
    import gguf
    from conversion.base import TextModel

    write_tensors = gguf.GGUFWriter.write_tensors_to_file

    def write_tensors_reporting(self: Any, *, progress: bool = False) -> None:
        infos = [info for shard in self.tensors for info in shard.values()]
        for index, info in enumerate(infos, start=1):
            info.tensor = _ReportingTensor(info.tensor, index, len(infos))
        write_tensors(self, progress=False)

    gguf.GGUFWriter.write_tensors_to_file = write_tensors_reporting  # type: ignore[method-assign]

    if args.pre_tokenizer:
        detect_pre = TextModel.get_vocab_base_pre

        def pre_tokenizer(self: Any, tokenizer: Any) -> str:
            # llama.cpp knows a BPE pre-tokenizer by the hash of its output on a fixed text; a tokenizer
            # trained here has a hash nobody listed. The caller read tokenizer.json's own pre-tokenizer
            # and named the llama.cpp one that splits text the same way.
            try:
                return str(detect_pre(self, tokenizer))
            except NotImplementedError:
                logging.getLogger("loradeck").warning(
                    "pre-tokenizer not recognized by hash; writing %r", args.pre_tokenizer
                )
                return str(args.pre_tokenizer)

        TextModel.get_vocab_base_pre = pre_tokenizer  # type: ignore[method-assign]

    if args.chat_template_file:
        template = Path(args.chat_template_file).read_text(encoding="utf-8")
        add_special = gguf.SpecialVocab.add_to_gguf

        def add_with_template(self: Any, gw: Any, quiet: bool = False) -> None:
            self.chat_template = template  # the run's chat format, not the tokenizer's own
            add_special(self, gw, quiet=quiet)

        gguf.SpecialVocab.add_to_gguf = add_with_template  # type: ignore[method-assign]

    convert_hf_to_gguf.main()


def _quantize(args: argparse.Namespace) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, args.ftype)
    params.nthread = args.threads
    status = llama_cpp.llama_model_quantize(str(args.infile).encode(), str(args.outfile).encode(), params)
    if status != 0:
        raise SystemExit(f"llama_model_quantize returned {status}")


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert")
    convert.add_argument("--converter-dir", type=Path, required=True)
    convert.add_argument("--model-dir", type=Path, required=True)
    convert.add_argument("--outfile", type=Path, required=True)
    convert.add_argument("--outtype", required=True)
    convert.add_argument("--pre-tokenizer")
    convert.add_argument("--chat-template-file")
    quantize = commands.add_parser("quantize")
    quantize.add_argument("--infile", type=Path, required=True)
    quantize.add_argument("--outfile", type=Path, required=True)
    quantize.add_argument("--ftype", required=True)  # a llama_cpp LLAMA_FTYPE_* name
    quantize.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    _convert(args) if args.command == "convert" else _quantize(args)
    _emit(done=True, peak_rss=_peak_rss())


if __name__ == "__main__":
    main()
