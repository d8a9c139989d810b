"""The web process stays light: importing it pulls in no ML library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from app.processes import free_port
from tests.conftest import stack_env
from tests.processes import REPO

ML_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors")


def test_importing_the_web_app_imports_no_ml_library() -> None:
    code = f"import sys, app.main, app.cli; print(','.join(m for m in {ML_LIBRARIES!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_app_never_imports_worker() -> None:
    code = "import sys, app.main, app.cli; print(any(m == 'worker' or m.startswith('worker.') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_web_on_a_database_never_migrated_stops_and_says_to_migrate(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    """`loradeck web` before `loradeck migrate` (as a compose file without the migrate service would): not a
    page of 500s, but an exit that names the command to run; the database is left as it was."""
    env = stack_env(tmp_path / "data", redis_url, database_url, free_port())
    web = subprocess.run(
        [sys.executable, "-m", "app.cli", "web", "--port", str(free_port())],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert web.returncode != 0
    assert "not migrated" in web.stderr and "loradeck migrate" in web.stderr, web.stderr[-2000:]
    from sqlalchemy import create_engine, inspect

    engine = create_engine(database_url or f"sqlite:///{tmp_path / 'data' / 'loradeck.db'}")
    assert inspect(engine).get_table_names() == []
    engine.dispose()
