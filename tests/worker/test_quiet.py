"""Warnings known to be harmless are silenced where they are emitted, so a worker's log shows what matters."""

from __future__ import annotations

import subprocess
import sys

import pytest

KERNELS_WARNING = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _stderr(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr


def test_bitsandbytes_kernel_download_warning_is_silenced_by_the_worker_package() -> None:
    if KERNELS_WARNING not in _stderr("import bitsandbytes"):
        pytest.skip("bitsandbytes does not try the hub kernel on this CPU (no AVX512-BF16)")
    assert KERNELS_WARNING not in _stderr("import worker, bitsandbytes")
