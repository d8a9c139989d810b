"""A run's directory, and the one place that knows its layout:

    <runs_dir>/<run_id>/
        spec.json                  the spec as stored, written when a worker first claims the run
        train.log                  every attempt's log lines, appended
        checkpoints/checkpoint-N/  Trainer's checkpoints, N the global step (complete once trainer_state.json is in)
        adapter/                   the adapter in PEFT's own format, once saved
        merged.partial/ -> merged/ the merged model, moved into place once it is checked
        exports/<type>/            a GGUF export (the .gguf, its Modelfile, SHA256SUMS), once checked
        ranks/<rank>.json, stop    a multi-GPU run: how each rank ended; the worker's request to stop

The web reads it (log tail, checkpoints, what a delete removes), the worker writes it; of a finished run the
web also takes a checkpoint's adapter as the run's, and clears what a resume from a checkpoint trains again.
Nobody else joins these paths or parses a checkpoint's name.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from app.config import Settings, get_settings
from app.schemas import GGUF_TYPES

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARK = "trainer_state.json"  # Trainer writes it last: a checkpoint without it was cut off mid-save
# What of a checkpoint is the adapter, in PEFT's own format (the rest is Trainer's state for resuming:
# optimizer, scheduler, RNG, which the adapter's download would carry for nothing).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def checkpoint_name(step: int) -> str:
    """Trainer's name for the checkpoint of `step`."""
    return f"checkpoint-{step}"


def checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint named `checkpoint-N` (a path's last part will do); None for any other name."""
    match = CHECKPOINT_NAME.match(Path(name).name)
    return int(match.group(1)) if match else None


def tree_size(path: Path) -> int:
    """Bytes of every file below `path` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


@dataclass(frozen=True)
class Checkpoint:
    name: str
    step: int
    path: Path

    @property
    def size_bytes(self) -> int:
        return tree_size(self.path)

    @property
    def complete(self) -> bool:
        """Trainer finished writing it: it can be resumed from, or its adapter used."""
        return (self.path / COMPLETE_MARK).is_file()


@dataclass(frozen=True)
class RunDir:
    run_id: str
    root: Path
    runs_dir: Path

    @classmethod
    def of(cls, run_id: str, settings: Settings | None = None) -> RunDir:
        runs_dir = (settings or get_settings()).runs_dir
        return cls(run_id=run_id, root=runs_dir / run_id, runs_dir=runs_dir)

    # --- the layout
    @property
    def spec_file(self) -> Path:
        return self.root / "spec.json"

    @property
    def log_file(self) -> Path:
        return self.root / "train.log"

    @property
    def samples_file(self) -> Path:
        """GRPO: the completions sampled during training with their rewards, one SamplesEvent's data a line."""
        return self.root / "samples.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        return self.root / "adapter"

    @property
    def merged_dir(self) -> Path:
        return self.root / "merged"

    @property
    def merged_partial_dir(self) -> Path:
        return self.root / "merged.partial"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    def export_dir(self, gguf_type: str) -> Path:
        """The folder of one GGUF export: `exports/<type>` (f16, q8_0, ...)."""
        if gguf_type not in GGUF_TYPES:  # the type names a folder: only the known ones
            raise ValueError(f"{gguf_type!r} is not a GGUF type")
        return self.exports_dir / gguf_type

    @property
    def ranks_dir(self) -> Path:
        return self.root / "ranks"

    def rank_result(self, rank: int) -> Path:
        return self.ranks_dir / f"{rank}.json"

    @property
    def stop_file(self) -> Path:
        return self.ranks_dir / "stop"

    def checkpoint_dir(self, name_or_step: str | int) -> Path:
        """A checkpoint's folder, by step or by its name (`checkpoint-N`)."""
        name = checkpoint_name(name_or_step) if isinstance(name_or_step, int) else name_or_step
        if checkpoint_step(name) is None:
            raise ValueError(f"{name!r} is not a checkpoint name (checkpoint-N)")
        return self.checkpoints_dir / name

    def relative(self, path: Path) -> str:
        """`path` as an artifact row stores it: relative to the runs dir (e.g. `<run_id>/adapter`)."""
        return path.relative_to(self.runs_dir).as_posix()

    # --- reading it
    def checkpoints(self, *, complete_only: bool = False) -> list[Checkpoint]:
        """The run's checkpoints, oldest first; `complete_only`: those Trainer finished writing."""
        found = []
        if self.checkpoints_dir.is_dir():
            for path in self.checkpoints_dir.iterdir():
                step = checkpoint_step(path.name)
                if step is not None and path.is_dir() and (not complete_only or (path / COMPLETE_MARK).is_file()):
                    found.append(Checkpoint(name=path.name, step=step, path=path))
        return sorted(found, key=lambda checkpoint: checkpoint.step)

    def remove_partial_checkpoints(self) -> None:
        """Delete checkpoints cut off mid-save (only the worker about to resume the run may do that)."""
        complete = {checkpoint.path for checkpoint in self.checkpoints(complete_only=True)}
        for checkpoint in self.checkpoints():
            if checkpoint.path not in complete:
                shutil.rmtree(checkpoint.path, ignore_errors=True)

    def resume_step(self) -> int:
        """The step the run resumes from: its newest complete checkpoint's, 0 without one."""
        complete = self.checkpoints(complete_only=True)
        return complete[-1].step if complete else 0

    def log_tail(self, lines: int = 200) -> list[str]:
        """The last `lines` lines of train.log (read from the end: logs can be large)."""
        if not self.log_file.is_file():
            return []
        with self.log_file.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            block = min(size, max(4096, lines * 400))
            handle.seek(size - block)
            text = handle.read().decode("utf-8", errors="replace")
        return text.splitlines()[-lines:]

    def removal_summary(self) -> dict[str, object]:
        """What deleting the run removes from disk: the directory, its size, and what it holds."""
        exists = self.root.is_dir()
        return {
            "directory": str(self.root),
            "exists": exists,
            "size_bytes": tree_size(self.root),
            "entries": sorted(p.name for p in self.root.iterdir()) if exists else [],
            "checkpoints": len(self.checkpoints()),
        }

    # --- changing it
    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def adopt_checkpoint(self, step: int) -> Path:
        """Make the adapter of the checkpoint of `step` the run's adapter (`adapter/`), its files copied whole
        into place: a download or a merge never sees half of one. The checkpoint stays as it is."""
        source = self.checkpoint_dir(step)
        partial = self.root / "adapter.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name in ADAPTER_FILES:
            shutil.copy2(source / name, partial / name)
        self.remove_adapter()
        partial.rename(self.adapter_dir)
        return self.adapter_dir

    def remove_adapter(self) -> None:
        """Delete the adapter and what was made of it (the merged model, the GGUF exports)."""
        for path in (self.adapter_dir, self.merged_dir, self.merged_partial_dir, self.exports_dir):
            shutil.rmtree(path, ignore_errors=True)

    def remove_checkpoints_after(self, step: int) -> None:
        """Delete the checkpoints past `step`: a run resumed from `step` trains those steps again."""
        for checkpoint in self.checkpoints():
            if checkpoint.step > step:
                shutil.rmtree(checkpoint.path, ignore_errors=True)

    def remove(self) -> None:
        """Delete the whole directory (never anything outside the runs dir)."""
        if self.root.is_dir() and self.root.resolve().is_relative_to(self.runs_dir.resolve()):
            shutil.rmtree(self.root)
