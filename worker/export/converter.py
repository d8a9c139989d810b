"""Where llama.cpp's own HF -> GGUF converter lives on this machine, and how to put it there.

The converter (convert_hf_to_gguf.py, its `conversion/` package and its own `gguf-py/`) is not in any
wheel: it ships only in llama-cpp-python's source distribution, next to the llama.cpp sources the
installed library was built from. Taking it from the same version keeps writer and loader in step: every
key and pre-tokenizer name the converter writes is one that library reads. The `gguf` package on PyPI is
no substitute: its 0.19.0 is months behind the converter's own gguf-py of the same version number.

    python -m worker.export fetch-converter    # the converter that matches the installed llama-cpp-python
                                               # (`make gguf` runs it), into <env>/share/loradeck/
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

ENV_DIR = "LORADECK_GGUF_CONVERTER"  # a folder holding convert_hf_to_gguf.py, conversion/ and gguf-py/
# Inside the Python environment llama-cpp-python is installed in: `make clean` (or a new image) starts afresh.
DEFAULT_ROOT = Path(sys.prefix) / "share" / "loradeck"
MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")
INSTALL_HINT = (
    "`make gguf` in a checkout, else "
    'CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" pip install "loradeck[gguf]" '
    "(it builds llama.cpp with the system compiler and cmake: 4 to 9 minutes on 2 cores) and "
    "`python -m worker.export fetch-converter`"
)


class ConverterMissing(RuntimeError):
    """llama-cpp-python or its converter is not installed; the message says how to install it."""


def llama_cpp_version() -> str:
    """The installed llama-cpp-python's version, read without loading the library."""
    try:
        return metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        raise ConverterMissing(f"llama-cpp-python is not installed; install it with: {INSTALL_HINT}") from None


def converter_dir() -> Path:
    """The converter folder: $LORADECK_GGUF_CONVERTER, else the one fetched for the installed llama-cpp-python."""
    configured = os.environ.get(ENV_DIR)
    folder = Path(configured) if configured else DEFAULT_ROOT / f"llama.cpp-converter-{llama_cpp_version()}"
    if not (folder / "convert_hf_to_gguf.py").is_file() or not (folder / "gguf-py" / "gguf").is_dir():
        where = f"${ENV_DIR}={configured}" if configured else str(folder)
        raise ConverterMissing(
            f"llama.cpp's converter is not at {where}. Fetch the one that matches llama-cpp-python "
            f"{llama_cpp_version()} with: {sys.executable} -m worker.export fetch-converter"
        )
    return folder


def fetch_converter(version: str | None = None, dest: Path | None = None, sdist: Path | None = None) -> Path:
    """Keep only the converter (2 MB) of llama-cpp-python's source distribution (77 MB): `sdist` if given
    (the file the library was built from), else one pip downloads."""
    version = version or llama_cpp_version()
    dest = dest or DEFAULT_ROOT / f"llama.cpp-converter-{version}"
    if (dest / "convert_hf_to_gguf.py").is_file() and (dest / "gguf-py" / "gguf").is_dir():
        return dest  # fetched already
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
                + ["--dest", tmp, f"llama-cpp-python=={version}"],
                check=True,
            )
            (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted fetch
        with tarfile.open(sdist) as archive:
            prefix = f"{archive.getnames()[0].split('/')[0]}/vendor/llama.cpp/"
            wanted = [
                m
                for m in archive.getmembers()
                if m.name.startswith(prefix) and m.name[len(prefix) :].startswith(MEMBERS)
            ]
            for member in wanted:
                member.name = member.name[len(prefix) :]
            archive.extractall(partial, members=wanted, filter="data")
    if dest.exists():
        raise FileExistsError(f"{dest} exists; remove it to fetch again")
    partial.rename(dest)
    return dest
