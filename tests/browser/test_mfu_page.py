"""The run page's throughput line: tokens/s, MFU (or why there is none) and GPU memory used and at peak, live and
from the stored history; the GPU-memory chart beside the loss where a run trained on a GPU."""

from __future__ import annotations

import re
import threading

import httpx
from playwright.sync_api import Page, expect

from app import runs
from app.db import get_sessionmaker
from app.formatting import human_bytes
from app.models import RunStatus
from tests.browser.test_pages import shot
from tests.worker.conftest import create_run

GIB = 1024**3


def test_a_cpu_run_shows_tokens_per_second_and_that_mfu_needs_a_known_gpu(web_url: str, page: Page) -> None:
    from worker.engine.train import run_training

    run_id = create_run(method="lora", quantization="none", max_steps=6, per_device_train_batch_size=4)
    page.goto(f"{web_url}/runs/{run_id}")
    expect(page.locator("#run-mfu")).to_have_text("MFU –")  # queued: nothing trained on yet
    trainer = threading.Thread(target=run_training, args=(run_id,), daemon=True)
    trainer.start()

    # Live: the first points bring the hardware the run recorded as it began (the CPU: no peak FLOPS).
    expect(page.locator("#run-mfu")).to_have_text("MFU: needs a known GPU", timeout=120_000)
    expect(page.locator("#run-mfu")).to_have_attribute("data-device", "cpu")
    expect(page.locator("#run-throughput")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=120_000)
    trainer.join(timeout=60)

    points = [p for p in httpx.get(f"{web_url}/api/v1/runs/{run_id}/metrics").json() if p["kind"] == "train"]
    assert points[-1]["tokens_per_sec"] > 0 and points[-1]["mfu"] is None
    for _ in range(2):  # live, then from the stored history
        shown = page.locator("#run-throughput").inner_text()
        assert abs(int(shown) - points[-1]["tokens_per_sec"]) <= 1  # the newest point's, whole tokens
        expect(page.locator("#run-mfu")).to_have_text("MFU: needs a known GPU")
        expect(page.locator("#run-gpu-memory")).to_be_hidden()  # no GPU memory to show on the CPU
        expect(page.locator("#gpu-card")).to_be_hidden()
        page.reload()
        expect(page.locator("#loss-chart")).to_have_attribute("data-points", str(len(points)))


def _gpu_run(device: str, peak: float | None, fpt: float | None = 3_352_690_688.0) -> str:
    """A finished run as a GPU worker records it: its hardware, and points with MFU and GPU memory."""
    from worker.engine.hardware import no_mfu

    run_id = create_run(method="lora", quantization="none", max_steps=3)
    points = [
        {
            "step": step,
            "time": float(step),
            "loss": 2.0 - step / 10,
            "tokens_per_sec": 120_000.0,
            "tokens_seen": step * 16384,
            "mfu": round(120_000 * fpt / peak, 5) if peak and fpt else None,
            "gpu_memory_bytes": (10 + step) * GIB,
            "gpu_peak_bytes": int((20 + step / 2) * GIB),
        }
        for step in (1, 2, 3)
    ]
    with get_sessionmaker()() as session:
        runs.claim_run(session=session, run_id=run_id, worker="gpu:1")
        runs.record_hardware(
            session=session,
            run_id=run_id,
            hardware={
                "device": device,
                "peak_flops": peak,
                "flops_per_token": fpt,
                "gpus": 1,
                "no_mfu": no_mfu(peak, {} if fpt else None, 450.0),
            },
        )
        runs.add_metrics(session=session, run_id=run_id, points=points)
        runs.finish_run(session=session, run_id=run_id, status=RunStatus.succeeded)
    return run_id


def test_a_gpu_run_shows_its_mfu_and_gpu_memory_used_and_at_peak(web_url: str, page: Page) -> None:
    h100 = _gpu_run("NVIDIA H100 80GB HBM3", 989e12)
    page.goto(f"{web_url}/runs/{h100}")
    expect(page.locator("#run-mfu")).to_have_text("MFU 40.7%")  # 120k tokens/s x 3.35 GFLOPs / 989 TFLOPS
    expect(page.locator("#run-gpu-memory")).to_be_visible()
    expect(page.locator("#run-gpu-used")).to_have_text(human_bytes(13 * GIB))  # "13.0 GiB", as the server writes
    expect(page.locator("#run-gpu-peak")).to_have_text(human_bytes(int(21.5 * GIB)))
    expect(page.locator("#gpu-card")).to_be_visible()
    expect(page.locator("#gpu-chart")).to_have_attribute("data-points", "3")
    expect(page.locator("#gpu-chart canvas")).to_have_count(1)
    shot(page, "run-mfu-gpu-memory")
    metrics = httpx.get(f"{web_url}/api/v1/runs/{h100}/metrics").json()
    assert [m["gpu_memory_bytes"] for m in metrics] == [11 * GIB, 12 * GIB, 13 * GIB]
    assert metrics[-1]["mfu"] == 0.4068

    # A GPU not in the table: tokens/s and memory, and why there is no MFU.
    t4 = _gpu_run("Tesla T4", None)
    page.goto(f"{web_url}/runs/{t4}")
    expect(page.locator("#run-mfu")).to_have_text("MFU: needs a known GPU")
    expect(page.locator("#run-mfu")).to_have_attribute("data-device", "Tesla T4")
    expect(page.locator("#run-throughput")).to_have_text("120000")
    expect(page.locator("#run-gpu-used")).to_have_text("13.0 GiB")

    # A known GPU, a model without a FLOPs formula (experts): what MFU needs, in the worker's words.
    experts = _gpu_run("NVIDIA H200", 989e12, fpt=None)
    page.goto(f"{web_url}/runs/{experts}")
    expect(page.locator("#run-mfu")).to_have_text("MFU: needs a dense model's shape")
    expect(page.locator("#gpu-chart")).to_have_attribute("data-points", "3")
