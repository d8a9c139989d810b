"""The web process stays light: importing it pulls in no ML library."""

from __future__ import annotations

import subprocess
import sys

ML_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors")


def test_importing_the_web_app_imports_no_ml_library() -> None:
    code = f"import sys, app.main, app.cli; print(','.join(m for m in {ML_LIBRARIES!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_app_never_imports_worker() -> None:
    code = "import sys, app.main, app.cli; print(any(m == 'worker' or m.startswith('worker.') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
