"""Property-based fuzzing of the JSON API from its own OpenAPI schema, against the running stack:
no generated request may get a 5xx. Uses the schemathesis command line, as an operator would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Stack

pytestmark = pytest.mark.slow


def test_api_never_answers_5xx(stack: Stack) -> None:
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "run", stack.url + "/api/v1/openapi.json",
        "--checks", "not_a_server_error",
        "--max-examples", "25",
        "--exclude-path-regex", "/events$",  # a live run's stream never ends by itself; tested elsewhere
        "--request-timeout", "60",
        "--generation-deterministic",
        "--phases", "examples,coverage,fuzzing",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
