"""/api/docs works offline under the Content-Security-Policy: Swagger UI from vendored files draws every
operation of the schema, and the browser reports no refused script or style."""

from __future__ import annotations

from playwright.sync_api import Page


def test_api_docs_draw_every_operation_offline(web_url: str, page: Page) -> None:
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    page.goto(web_url + "/api/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/api/v1/runs" in paths and "/api/v1/datasets" in paths
    assert not [p for p in problems if "Content Security Policy" in p or "failed:" in p], problems
