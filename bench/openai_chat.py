"""Chat completions through `/v1/chat/completions` against the same generation called in-process: tokens/s and
time to first token, streamed through the official `openai` SDK.

    .venv/bin/python bench/openai_chat.py [--repeats 5] [--max-tokens 128] [--quick]

The API side is the whole path a script takes: the SDK, uvicorn, the web's checks, the generate queue (Celery on a
private redis-server), the generate worker's loaded model, the Redis Stream back, server-sent events. The in-process
side is the worker's own decoding (worker.serving.completions.decode_choices) on the same model in this process:
same model (the bundled tiny-llama), same conversation through the same chat template, same max tokens, greedy, so
both produce the same tokens. The sides alternate, after one warm-up each (the worker's first request loads the
model; that cold request is recorded apart). Medians of the repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import publish, write_result  # noqa: E402

# The tiny model ends most answers within 20 tokens; this one runs to about 50, which steadies tokens/s.
MESSAGES = [{"role": "user", "content": "Tell me a long story about a dragon."}]
MODEL = "tiny-llama"


class Stack:
    """A private redis-server, a generate worker and uvicorn over a scratch data dir."""

    def __init__(self, root: Path, threads: int) -> None:
        from app.processes import free_port, start_redis

        redis_port, self.port = free_port(), free_port()
        self.processes = [start_redis(port=redis_port, directory=root / "redis", persist=False)]
        self.env = dict(os.environ, LORADECK_DATA_DIR=str(root / "data"), REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
                        OMP_NUM_THREADS=str(threads))  # fmt: skip
        subprocess.run([sys.executable, "-m", "app.cli", "migrate"], env=self.env, cwd=REPO, check=True,
                       capture_output=True)  # fmt: skip
        log = (root / "stack.log").open("ab")
        web = ["-m", "uvicorn", "app.main:app", "--port", str(self.port), "--log-level", "warning"]
        for args in (["-m", "app.cli", "worker", "--queues", "generate"], web):
            process = subprocess.Popen([sys.executable, *args], env=self.env, cwd=REPO, stdout=log, stderr=log)
            self.processes.append(process)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/v1/models", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"uvicorn did not answer within 60 s; see {root / 'stack.log'}")

    def close(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            process.wait(timeout=30)


def through_api(url: str, max_tokens: int) -> dict[str, Any]:
    """One streamed chat completion through the SDK: seconds to the first text, in all, and the tokens."""
    from openai import OpenAI

    sdk = OpenAI(base_url=url + "/v1", api_key="sk-bench", max_retries=0, timeout=300)
    started = time.perf_counter()
    first: float | None = None
    text, usage = "", None
    request: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "temperature": 0, "max_tokens": max_tokens}
    stream = sdk.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                first = first or time.perf_counter() - started
                text += choice.delta.content
        usage = chunk.usage or usage
    total = time.perf_counter() - started
    assert usage is not None and first is not None
    return {"ttft_s": first, "total_s": total, "tokens": usage.completion_tokens, "text": text}


class InProcess:
    """The worker's decoding of the same model, loaded here once."""

    def __init__(self, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        from app.config import TINY_MODEL_DIR
        from worker.serving.conversation import conversation_ids

        self.model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype="auto").eval()
        self.tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
        self.ids = torch.tensor([conversation_ids(self.tokenizer, "auto", MESSAGES)])

    def __call__(self, max_tokens: int) -> dict[str, Any]:
        from app.contracts.completions import CompletionJob
        from worker.serving.completions import decode_choices
        from worker.serving.generate import Side

        job = CompletionJob(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=max_tokens)  # type: ignore[arg-type]
        first: list[float] = []
        started = time.perf_counter()

        def on_text(_: int, __: str) -> None:
            if not first:
                first.append(time.perf_counter() - started)

        (answer,) = decode_choices(Side("base", self.model, None), self.tokenizer, self.ids, job, on_text)
        total = time.perf_counter() - started
        return {"ttft_s": first[0], "total_s": total, "tokens": answer.tokens, "text": answer.text}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "ttft_ms": round(statistics.median(r["ttft_s"] for r in runs) * 1000, 1),
        "tokens_per_s": round(statistics.median(r["tokens"] / r["total_s"] for r in runs), 1),
        "tokens": [r["tokens"] for r in runs],
        "ttft_ms_each": [round(r["ttft_s"] * 1000, 1) for r in runs],
        "tokens_per_s_each": [round(r["tokens"] / r["total_s"], 1) for r in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads on each side (the worker's OMP_NUM_THREADS): on a shared CPU, more threads than free "
        "cores make both sides several times slower and their ratio noise",
    )
    parser.add_argument("--quick", action="store_true", help="2 repeats, 32 tokens, the README left alone")
    args = parser.parse_args()
    repeats, max_tokens = (2, 32) if args.quick else (args.repeats, args.max_tokens)
    stack = Stack(Path(tempfile.mkdtemp(prefix="loradeck-openai-bench-")), args.threads)
    try:
        local = InProcess(args.threads)
        cold = through_api(stack.url, max_tokens)  # the worker loads the model
        local(max_tokens)
        api_runs, local_runs = [], []
        for _ in range(repeats):
            api_runs.append(through_api(stack.url, max_tokens))
            local_runs.append(local(max_tokens))
    finally:
        stack.close()
    same = {r["text"] for r in api_runs} == {r["text"] for r in local_runs} and len({r["text"] for r in api_runs}) == 1
    api, here = summary(api_runs), summary(local_runs)
    figures = {
        "model": MODEL,
        "max_tokens": max_tokens,
        "repeats": repeats,
        "threads": args.threads,
        "api": api,
        "in_process": here,
        "cold_api_ttft_ms": round(cold["ttft_s"] * 1000, 1),
        "same_text": same,
        "tokens_per_s_ratio": round(api["tokens_per_s"] / here["tokens_per_s"], 3),
        "ttft_overhead_ms": round(api["ttft_ms"] - here["ttft_ms"], 1),
    }
    command = ".venv/bin/python bench/openai_chat.py" + (" --quick" if args.quick else f" --repeats {repeats}")
    command += f" --threads {args.threads}" if args.threads != 1 else ""
    path = write_result("openai-chat" if not args.quick else "openai-chat-quick", command, figures)
    table = "\n".join([
        "## Chat completions through /v1 vs in-process",
        "",
        f"`{command}` — recorded in `results/{path.name}`. The bundled {MODEL}, one conversation through its chat "
        f"template, greedy, up to {max_tokens} tokens ({api['tokens'][0]} generated; same text on both sides: "
        f"{'yes' if same else 'NO'}); streamed through the `openai` SDK, uvicorn, the generate queue and worker, "
        f"against the worker's decoding called in this process, {args.threads} torch thread(s) each. Medians of "
        f"{repeats}, alternating.",
        "",
        "| | time to first token | tokens/s |",
        "| --- | --- | --- |",
        f"| `/v1/chat/completions`, streamed | {api['ttft_ms']} ms | {api['tokens_per_s']} |",
        f"| in-process decoding | {here['ttft_ms']} ms | {here['tokens_per_s']} |",
        f"| API / in-process | {figures['ttft_overhead_ms']:+} ms | {figures['tokens_per_s_ratio']}x |",
        "",
        f"The first request after the worker starts loads the model: {figures['cold_api_ttft_ms']} ms to its first "
        "token.",
    ])  # fmt: skip
    publish("openai-chat", table, quick=args.quick)


if __name__ == "__main__":
    main()
