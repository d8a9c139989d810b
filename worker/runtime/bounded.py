"""Run one call in a child process under a memory limit and a hard time limit.

For work on files a user sent (dataset descriptions): a hostile file then costs the child its memory limit
and the time limit at most, and the worker that asked stays as it was. Children are forked from a
forkserver that has the readers and transformers imported already, so each call starts in milliseconds; the
forkserver itself is single-threaded, which makes forking it safe where forking a threaded worker is not.
"""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.connection
import resource
import threading
from multiprocessing.context import ForkServerContext
from typing import Any

PRELOAD = ["worker.data.describe", "worker.data.encode", "transformers.models.auto.tokenization_auto"]
_lock = threading.Lock()
_context: ForkServerContext | None = None


class LimitExceeded(RuntimeError):
    """The call needed more memory or time than it may have; the message names the limit and its setting."""


def context() -> ForkServerContext:
    """The forkserver context, started on first use (`warm()` starts it ahead of the first call)."""
    global _context
    with _lock:
        if _context is None:
            _context = multiprocessing.get_context("forkserver")
            _context.set_forkserver_preload(PRELOAD)
        return _context


def warm() -> None:
    """Start the forkserver now, so the first call does not wait for its imports."""
    from multiprocessing import forkserver

    context()
    forkserver.ensure_running()


def _data_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(conn: multiprocessing.connection.Connection, target: str, payload: Any, memory_bytes: int) -> None:
    # RLIMIT_DATA counts the heap and private anonymous mappings (malloc, numpy, Arrow): what a parser grows.
    limit = _data_bytes() + memory_bytes
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    module, _, name = target.partition(":")
    try:
        conn.send(("ok", getattr(importlib.import_module(module), name)(payload)))
    except MemoryError:
        conn.send(("memory", None))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_bounded(target: str, payload: Any, *, memory_bytes: int, time_s: float, what: str) -> Any:
    """`module:function`(payload) in a child, its answer returned; LimitExceeded when it needs more memory
    than `memory_bytes` or more time than `time_s`, RuntimeError when it raised."""
    ctx = context()
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(sender, target, payload, memory_bytes), daemon=True)
    process.start()
    sender.close()
    memory = f"{memory_bytes / 1024**2:,.0f} MiB of memory (LORADECK_INSPECT_MEMORY_MB)"
    try:
        if not receiver.poll(time_s):
            raise LimitExceeded(f"{what} took longer than {time_s:g} s (LORADECK_INSPECT_TIME_LIMIT_S), so it stopped")
        try:
            kind, value = receiver.recv()
        except EOFError:  # died without a word: an allocation failed inside native code (tokenizers abort)
            raise LimitExceeded(f"{what} needed more than {memory}") from None
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        receiver.close()
    if kind == "memory":
        raise LimitExceeded(f"{what} needed more than {memory}")
    if kind == "error":
        raise RuntimeError(value)
    return value
