"""The worker: Celery tasks that train LoRA/QLoRA adapters and merge them into their base models.

Importing this package (or `worker.runtime.celery_app`, `worker.runtime.tasks`) stays light: torch, transformers
and peft load inside the task bodies, when there is work to do.
"""

import logging


class _KnownHarmless(logging.Filter):
    """Drops warnings known to be harmless here, at the logger that emits them."""

    def __init__(self, *starts: str) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


# bitsandbytes tries to download an optional CPU kernel from a model hub on every import and warns when it
# cannot (no `kernels` package, or no network); it then uses its own built-in kernel, which is what the
# CPU tests and QLoRA runs here measure.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    _KnownHarmless("Failed to load CPU gemm_4bit_forward from kernels-community")
)
