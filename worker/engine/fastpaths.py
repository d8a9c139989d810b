"""The throughput switches (RunSpec's packing, gradient_checkpointing, liger_kernel, torch_compile): each one's
`auto` resolved into on or off for this model on this machine, with the reason a user reads on the run page.

`resolve` is pure: the spec, the base's config and the device's facts in, one FastPath per switch out, so a test
can play a GPU without Triton or an architecture Liger does not cover on a CPU. An explicit "on" where the fast
path cannot apply is refused at once (RunError naming the field), never quietly turned off; "off" is always
honoured. The rest of the engine reads only the resolved spec (`applied`): "on" is on, anything else off.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from transformers import AutoConfig, PretrainedConfig

from app import runs
from app.config import get_settings
from app.contracts.events import LogEvent
from app.objectives import REGISTRY, objectives_using
from app.schemas import FAST_PATH_FIELDS, RunSpec
from worker.data.hub import model_source
from worker.engine import micro_batch
from worker.errors import RunError
from worker.runtime.publisher import EventPublisher

log = logging.getLogger(__name__)

GIB = 1024**3
# Of the GPU's free memory, the share the estimate may fill before auto turns gradient checkpointing on: the
# estimate leaves out the CUDA context (~0.5 GiB) and the allocator's fragmentation (its own notes). A margin
# chosen, not yet measured: no GPU run has compared the estimate with a measured peak (issue 28's GPU rows).
MEMORY_HEADROOM = 0.85
LIGER_INSTALL = "pip install 'loradeck[fast]' (or pip install liger-kernel)"
# Architectures on which a packed batch was checked loss-equal to the padded one (tests/worker/test_fast_paths.py
# and test_packed_rows.py, tiny models of each family): their attention reads the restarts in position_ids.
PACKING_CHECKED = frozenset({"llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2"})


@dataclass(frozen=True)
class FastPath:
    """One switch as the worker resolved it: what the spec asked, what the run uses, and why."""

    name: str
    asked: str
    chosen: str
    reason: str

    def record(self) -> dict[str, str]:
        """The shape Run.fast_paths stores and the API returns."""
        return {"name": self.name, "asked": self.asked, "chosen": self.chosen, "reason": self.reason}


@dataclass(frozen=True)
class DeviceFacts:
    """What the switches depend on in the machine: a CUDA GPU and its free memory, Triton, and the model
    types the installed liger-kernel patches (None: liger-kernel is not importable)."""

    cuda: bool
    free_memory_bytes: int | None = None
    triton: bool = False
    liger_model_types: frozenset[str] | None = None


def device_facts() -> DeviceFacts:
    """This process's facts; liger-kernel is imported only where a GPU and Triton make it usable."""
    import torch

    if not torch.cuda.is_available():
        return DeviceFacts(cuda=False)
    free, _total = torch.cuda.mem_get_info()
    triton = importlib.util.find_spec("triton") is not None
    liger = _liger_model_types() if triton else None
    return DeviceFacts(cuda=True, free_memory_bytes=int(free), triton=triton, liger_model_types=liger)


def _liger_model_types() -> frozenset[str] | None:
    if importlib.util.find_spec("liger_kernel") is None:
        return None
    try:
        patches = importlib.import_module("liger_kernel.transformers.monkey_patch")
    except Exception:  # installed but broken (a Triton it does not match): as good as absent
        return None
    return frozenset(getattr(patches, "MODEL_TYPE_TO_APPLY_LIGER_FN", {}))


def resolve(
    spec: RunSpec,
    config: PretrainedConfig,
    facts: DeviceFacts,
    memory_needed: Callable[[RunSpec], int] | None = None,
) -> list[FastPath]:
    """Each switch resolved. `memory_needed`: the pre-flight estimate's total bytes for a spec (called only on
    a GPU with gradient_checkpointing auto; default worker.engine.estimate's)."""
    model_type = str(getattr(config, "model_type", "") or "")
    checkpointing = _gradient_checkpointing(spec, facts, memory_needed)
    return [
        _packing(spec, model_type),
        _micro_batch(spec, facts, memory_needed, checkpointing.chosen),
        checkpointing,
        _liger_kernel(spec, model_type, facts),
        _torch_compile(spec),
    ]


def choose(spec: RunSpec, run_id: str, sessions: sessionmaker[Session], publisher: EventPublisher) -> RunSpec:
    """Resolve the switches for this run here and now, record them on the run (its page and the API show them)
    and in the log, and return the spec the engine trains with."""
    paths = resolve(spec, _base_config(spec), device_facts())
    with sessions() as session:
        runs.record_fast_paths(session=session, run_id=run_id, fast_paths=[p.record() for p in paths])
    lines = summary(paths)
    for line in lines:
        log.info(line)
    publisher.publish(LogEvent(lines=lines))
    return applied(spec, paths)


def _base_config(spec: RunSpec) -> PretrainedConfig:
    """The base's config.json; an empty config when it cannot be read (loading the base then fails with the
    reason, worker.engine.failures), so every auto falls back to off."""
    try:
        return AutoConfig.from_pretrained(  # type: ignore[no-any-return]
            model_source(spec.base_model), trust_remote_code=get_settings().allow_trust_remote_code
        )
    except Exception as exc:  # whatever it is, loading the base meets it next and explains it
        log.info("fast paths resolved without the base's config (%s)", exc)
        return PretrainedConfig()


def applied(spec: RunSpec, paths: list[FastPath] | list[dict[str, Any]]) -> RunSpec:
    """The spec with each switch set to its chosen value (FastPath or its recorded dict)."""
    chosen: dict[str, Any] = {}
    for path in paths:
        name, value = (path.name, path.chosen) if isinstance(path, FastPath) else (path["name"], path["chosen"])
        if name in FAST_PATH_FIELDS:
            chosen[str(name)] = str(value)
        elif name == "micro_batch_size":  # the passes, the optimizer step's examples as they were
            step = spec.per_device_train_batch_size * spec.gradient_accumulation_steps
            size = int(value)
            chosen |= {"per_device_train_batch_size": size, "gradient_accumulation_steps": step // size}
    return spec.model_copy(update=chosen)


def summary(paths: list[FastPath]) -> list[str]:
    """One log line per switch, as train.log and the live log show them."""
    return [f"fast path {p.name}: {p.asked} -> {p.chosen} ({p.reason})" for p in paths]


def _packing(spec: RunSpec, model_type: str) -> FastPath:
    asked = spec.packing
    if (used_by := objectives_using("packing")) and spec.objective not in used_by:
        return FastPath("packing", asked, "off", f"objective {spec.objective} trains on whole rows; packing is sft's")
    if spec.method == "prompt_tuning":  # the spec refuses "on" here already
        return FastPath("packing", asked, "off", "prompt tuning's virtual tokens drop the position ids packing needs")
    if asked != "auto":
        return FastPath("packing", asked, asked, f"set {asked} in the spec")
    if model_type not in PACKING_CHECKED:
        checked = ", ".join(sorted(PACKING_CHECKED))
        return FastPath(
            "packing", asked, "off",
            f"packed rows are checked loss-equal on {checked}, not {model_type or 'this model'}; set on to pack anyway",
        )  # fmt: skip
    return FastPath("packing", asked, "on", "padding-free rows give the padded batch's loss on this architecture")


def _gradient_checkpointing(
    spec: RunSpec, facts: DeviceFacts, memory_needed: Callable[[RunSpec], int] | None
) -> FastPath:
    asked = spec.gradient_checkpointing
    if asked != "auto":
        return FastPath("gradient_checkpointing", asked, asked, f"set {asked} in the spec")
    if not facts.cuda or facts.free_memory_bytes is None:
        return FastPath("gradient_checkpointing", asked, "off", "no GPU memory to save on the CPU")
    probe: dict[str, Any] = {"gradient_checkpointing": "off", "gradient_accumulation_steps": 1}
    if micro_batch_auto(spec):  # smaller passes come before recomputation: needed only if one example overflows
        probe["per_device_train_batch_size"] = _least_pass(spec)
    elif spec.micro_batch_size != "auto":  # passes of the size asked for
        probe["per_device_train_batch_size"] = spec.micro_batch_size
    try:
        need = (memory_needed or _estimated_bytes)(spec.model_copy(update=probe))
    except ValueError as exc:  # EstimateError: the estimate names what it could not read
        return FastPath("gradient_checkpointing", asked, "off", f"no memory estimate to weigh ({exc})")
    room = facts.free_memory_bytes * MEMORY_HEADROOM
    needed, free = f"{need / GIB:.1f} GiB", f"{facts.free_memory_bytes / GIB:.1f} GiB"
    if need <= room:
        return FastPath(
            "gradient_checkpointing", asked, "off", f"the estimate ({needed}) fits the GPU's {free} free without it"
        )
    return FastPath(
        "gradient_checkpointing", asked, "on",
        f"the estimate without it ({needed}) exceeds {MEMORY_HEADROOM:.0%} of the GPU's {free} free",
    )  # fmt: skip


def micro_batch_auto(spec: RunSpec) -> bool:
    """Whether micro_batch_size auto fits the passes to the GPU's memory for this objective: not for one that
    generates (GRPO: its completions come a batch as set at a time) nor one whose loss pairs the rows of a pass
    (KTO's KL term: another pass size is another loss)."""
    objective = REGISTRY[spec.objective]
    return spec.micro_batch_size == "auto" and not objective.generates and objective.min_batch_size <= 1


def _least_pass(spec: RunSpec) -> int:
    return max(1, REGISTRY[spec.objective].min_batch_size)


def _micro_batch(
    spec: RunSpec, facts: DeviceFacts, memory_needed: Callable[[RunSpec], int] | None, checkpointing: str
) -> FastPath:
    """Examples a forward/backward pass (worker.engine.micro_batch): on a GPU with auto, the largest divisor of the
    optimizer step's examples whose estimate, with gradient checkpointing as chosen, fits the free memory."""
    asked = spec.micro_batch_size
    batch, accumulation = spec.per_device_train_batch_size, spec.gradient_accumulation_steps
    if asked == "auto" and not micro_batch_auto(spec):
        why = "generates its completions" if REGISTRY[spec.objective].generates else "pairs the rows of its KL term"
        return FastPath("micro_batch_size", "auto", str(batch), f"{spec.objective} {why} a batch as set at a time")
    fits, where = None, "on the CPU"
    if asked == "auto" and facts.cuda and facts.free_memory_bytes is not None:
        need = memory_needed or _estimated_bytes
        at = {"gradient_checkpointing": checkpointing, "gradient_accumulation_steps": 1}
        try:  # activations grow with the pass's examples, the rest does not: two estimates give both
            one = need(spec.model_copy(update=at | {"per_device_train_batch_size": 1}))
            two = need(spec.model_copy(update=at | {"per_device_train_batch_size": 2}))
        except ValueError as exc:  # EstimateError: the estimate names what it could not read
            where = f"no memory estimate ({exc})"
        else:
            room = int(facts.free_memory_bytes * MEMORY_HEADROOM)
            fits = micro_batch.fits_by_estimate(one - (two - one), two - one, room)
    chosen = micro_batch.choose(
        batch=batch, accumulation=accumulation, asked=asked, fits=fits, where=where, least=_least_pass(spec)
    )
    return FastPath("micro_batch_size", str(asked), str(chosen.size), chosen.reason)


def _estimated_bytes(spec: RunSpec) -> int:
    from worker.engine.estimate import estimate_spec

    return int(estimate_spec(spec).memory.total)


def _liger_kernel(spec: RunSpec, model_type: str, facts: DeviceFacts) -> FastPath:
    asked = spec.liger_kernel
    if asked == "off":
        return FastPath("liger_kernel", asked, "off", "set off in the spec")
    problem = _liger_problem(model_type, facts)
    if problem and asked == "on":
        raise RunError(f"liger_kernel: on, but {problem}; set liger_kernel to auto or off")
    if problem:
        return FastPath("liger_kernel", asked, "off", problem)
    if asked == "auto" and spec.objective != "sft":
        # TRL's preference and GRPO trainers swap their whole loss for Liger's fused one under use_liger_kernel
        # (with its own refusals by loss type); that path has no loss-equality check here yet.
        return FastPath(
            "liger_kernel", asked, "off", f"TRL's {spec.objective} trainer swaps its loss for Liger's; set on to use it"
        )
    if asked == "auto":
        # The bar is "losses unchanged, proven"; no GPU run here has compared Liger's fused kernels with the
        # plain path yet (and its fused cross-entropy reads lm_head's weight itself: an adapter there would be
        # passed over). Until then auto stays off where it could run, and says so.
        return FastPath("liger_kernel", asked, "off", f"CUDA, Triton and liger-kernel cover {model_type}, but its "
                        "losses are not yet checked against the plain path here; set on to use it")  # fmt: skip
    return FastPath("liger_kernel", asked, "on", "set on in the spec")


def _liger_problem(model_type: str, facts: DeviceFacts) -> str | None:
    """Why Liger's kernels cannot run here, or None."""
    if not facts.cuda:
        return "Liger's kernels are Triton GPU kernels and this worker has no CUDA GPU"
    if not facts.triton:
        return "Triton is not installed (Liger's kernels are written in it)"
    if facts.liger_model_types is None:
        return f"liger-kernel is not installed: {LIGER_INSTALL}"
    if model_type not in facts.liger_model_types:
        return f"liger-kernel does not cover the architecture {model_type or '(unknown)'}"
    return None


def _torch_compile(spec: RunSpec) -> FastPath:
    asked = spec.torch_compile
    if asked != "auto":
        return FastPath("torch_compile", asked, asked, f"set {asked} in the spec")
    # The bar is "measured faster, compiled in under a minute"; no GPU measurement of it exists yet.
    return FastPath(
        "torch_compile", asked, "off", "not yet measured faster than eager on this hardware; set on to try it"
    )
