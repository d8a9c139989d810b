"""/api/docs works offline under the Content-Security-Policy: Swagger UI from vendored files draws every
operation of the schema, and the browser reports no refused script or style."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from playwright.sync_api import Page

from app.processes import free_port

pytestmark = pytest.mark.browser


@pytest.fixture
def web(loradeck_env: dict[str, str]) -> Iterator[str]:
    from app.main import app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_api_docs_draw_every_operation_offline(web: str, page: Page) -> None:
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    page.goto(web + "/api/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/api/v1/runs" in paths and "/api/v1/datasets" in paths
    assert not [p for p in problems if "Content Security Policy" in p or "failed:" in p], problems
