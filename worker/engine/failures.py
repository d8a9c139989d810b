"""Why a run failed, in words a user can act on: each message names the setting to change.

`explain(exc, spec, run_dir)` turns what training raised into the run's `error`: out of memory, a loss
that became NaN, a full disk, a base model that is not there; errors that already speak plainly (a bad
dataset line, a refused setting) pass through as they are.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

import torch

from app.objectives import REGISTRY
from worker.engine.callbacks import TrainingDiverged
from worker.errors import RunError

# torch.save reports a full disk as a RuntimeError of its zip writer, without the errno.
WRITE_FAILED = ("file write failed", "No space left on device", "unexpected pos")
LOW_SPACE_BYTES = 64 * 1024**2


def explain(exc: BaseException, spec: dict[str, Any], run_dir: Path) -> str:
    if isinstance(exc, TrainingDiverged):
        return diverged(exc, spec)
    if _out_of_memory(exc):
        return out_of_memory(exc, spec)
    full = _disk_full(exc, run_dir)
    if full is not None:
        return f"the disk holding {full} is full: free space or point LORADECK_DATA_DIR elsewhere"
    if isinstance(exc, RunError | ValueError | OSError) and str(exc):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def explained(exc: BaseException, run_dir: Path) -> bool:
    """Whether the message says it all (no traceback needed in train.log): the failures this module knows."""
    return isinstance(exc, RunError | TrainingDiverged) or _out_of_memory(exc) or _disk_full(exc, run_dir) is not None


def diverged(exc: TrainingDiverged, spec: dict[str, Any]) -> str:
    what = {"loss": "loss", "eval_loss": "eval loss", "grad_norm": "the gradient norm"}.get(exc.name, exc.name)
    value = "NaN" if exc.value != exc.value else ("infinite" if exc.value > 0 else "-infinite")
    tips = [f"lower learning_rate (now {spec.get('learning_rate')})"]
    if not spec.get("max_grad_norm"):
        tips.append("clip gradients with max_grad_norm 1.0 (now 0: off)")
    if not spec.get("warmup_ratio"):
        tips.append("warm up with warmup_ratio 0.03")
    if spec.get("precision") == "fp16":
        tips.append("use bf16 or fp32 instead of fp16 precision (fp16 overflows)")
    return f"{what} became {value} at step {exc.step}, so training stopped there: " + ", or ".join(tips)


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    # bitsandbytes and some kernels raise a plain RuntimeError for the same thing.
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def out_of_memory(exc: BaseException, spec: dict[str, Any]) -> str:
    where = "host memory (RAM)" if isinstance(exc, MemoryError) else "GPU memory"
    batch, length = spec.get("per_device_train_batch_size"), spec.get("max_seq_length")
    micro = spec.get("micro_batch_size", "auto")
    if micro == "auto":  # auto works from the step's examples: fewer a pass is the number to set
        passes = "set micro_batch_size to fewer examples a pass than auto chose (the run page's Fast paths card says)"
    else:
        passes = f"lower micro_batch_size (now {micro}; the step keeps its examples)"
    objective = REGISTRY.get(str(spec.get("objective", "sft")))
    fixed = objective is not None and (objective.generates or objective.min_batch_size > 1)  # passes as set
    tips = [
        f"lower per_device_train_batch_size (now {batch}) and raise gradient_accumulation_steps to keep the "
        "effective batch"
        if fixed
        else passes,
        f"lower max_seq_length (now {length})",
    ]
    if spec.get("gradient_checkpointing") not in (True, "on"):  # auto turns it on only by the estimate
        tips.append("set gradient_checkpointing to on")
    if spec.get("method") == "lora" and spec.get("quantization", "auto") in ("auto", "none"):
        tips.append("load the base in 4-bit (method qlora)")
    return f"out of {where}: " + ", or ".join(tips)


def _disk_full(exc: BaseException, run_dir: Path) -> Path | None:
    """The directory whose disk is full, when that is what went wrong (looking through chained errors)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return _existing_dir(Path(seen.filename) if seen.filename else run_dir)
        write_failed = isinstance(seen, RuntimeError) and any(text in str(seen) for text in WRITE_FAILED)
        if write_failed and _free_bytes(run_dir) < LOW_SPACE_BYTES:  # a failed write on a nearly full disk
            return _existing_dir(run_dir)
        seen = seen.__cause__ or seen.__context__
    return None


def _existing_dir(path: Path) -> Path:
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(_existing_dir(path)).free
    except OSError:
        return 0


def model_not_found(base_model: str, exc: BaseException | None = None) -> RunError:
    """base_model is gone since the run was queued (a deleted directory), or the hub has no such model."""
    if base_model.startswith(("/", ".", "~")):
        why = "the directory is gone (deleted, moved, or on a disk this worker does not mount)"
        fix = "put the model back there, or start a new run with another base_model"
    else:
        why = "not on the Hugging Face Hub, or the Hub cannot be reached and it is not in the local cache"
        fix = "check the id and the network, or download it first and give its local directory"
    detail = f" ({str(exc).splitlines()[0]})" if exc is not None and str(exc) else ""
    return RunError(f"base_model: {base_model} not found: {why}{detail}; {fix}")


def check_base_model(spec: dict[str, Any]) -> None:
    """Refuse a local base model that is gone before the spec check does, with a message that says so."""
    base_model = str(spec.get("base_model", ""))
    if base_model.startswith(("/", ".", "~")) and not Path(base_model).expanduser().exists():
        raise model_not_found(base_model)
