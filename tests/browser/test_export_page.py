"""The run page's "Export GGUF": pick a type, click, watch the export merge, convert and check, then download
the .gguf with its Modelfile, in a real browser."""

from __future__ import annotations

import tarfile
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.conftest import Stack


def test_export_gguf_from_the_run_page_shows_its_check_and_downloads(
    gguf_stack: Stack, page: Page, tmp_path: Path
) -> None:
    run_id = gguf_stack.start_run(name="export from the page", method="lora", max_steps=10)["id"]
    page.goto(f"{gguf_stack.url}/runs/{run_id}")
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=300_000)
    expect(page.locator("#export-form")).to_be_visible()

    page.select_option("#export-type", "f16")
    page.click("#export-button")
    row = page.locator('tr[data-kind="gguf"]')
    expect(row).to_be_visible()
    # The panel follows the export as it merges, converts and checks; once ready it shows the check's figures.
    expect(row).to_have_attribute("data-status", "ready", timeout=300_000)
    check = row.locator(".gguf-check")
    expect(check).to_have_attribute("data-passed", "true")
    expect(check).to_contain_text("the same token ids on every prompt")
    expect(check).to_contain_text("of their spread (allowed 0.02)")
    merged = page.locator('tr[data-kind="merged"]')
    expect(merged).to_have_attribute("data-status", "ready")  # merged first, by the export itself

    with page.expect_download() as caught:
        page.click("#download-gguf-f16")
    download = caught.value
    assert download.suggested_filename == f"{run_id}-gguf-f16.tar"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with tarfile.open(saved) as archive:
        names = sorted(Path(name).name for name in archive.getnames() if not name.endswith("/"))
    assert names == sorted(["Modelfile", "SHA256SUMS", f"{run_id}-f16.gguf"])
