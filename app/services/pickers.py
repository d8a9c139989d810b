"""What the new-run form's pickers offer: the datasets (the bundled sample and the uploads), the eval data (the
sample's eval file and the uploads) and the base models (the bundled one and every directory with a config.json
under the allowed model roots, those that cannot be used shown disabled)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import datasets
from app.config import TINY_MODEL_DIR, Settings
from app.dataset_shapes import SHAPE_NAMES, first_row_shape
from app.formatting import human_bytes
from app.models import Run
from app.preflight import model_files_missing
from app.rundir import RunDir
from app.schemas import SAMPLE_EVAL, SAMPLE_PAIRS, SAMPLE_PAIRS_EVAL, SAMPLE_TRAIN

MAX_DEPTH = 4  # root/org/name/snapshot: deep enough for a hub-style cache, shallow enough to be quick
MAX_MODELS = 100
SKIPPED_DIRS = {"checkpoints", "datasets", "redis", "node_modules", "__pycache__", "adapter", "logs"}


@dataclass
class Choice:
    value: str  # what the field receives
    label: str  # what the picker shows
    unusable: str = ""  # why it cannot be chosen (the picker shows it disabled, saying so)
    shape: str = ""  # a dataset's row shape (SHAPE_NAMES): the page offers it only to the objectives that take it


def shaped(path: Path | str, label: str, shape: str | None) -> Choice:
    """A dataset choice labelled with its rows' shape ("preference.jsonl — prompt/chosen/rejected")."""
    named = SHAPE_NAMES.get(shape or "")
    return Choice(str(path), f"{label} — {named}" if named else label, shape=shape or "" if named else "")


def bundled(files: tuple[tuple[Path, str], ...]) -> list[Choice]:
    return [shaped(path, f"Bundled sample: {what} ({path.name})", first_row_shape(path)) for path, what in files]


def dataset_options(session: Session) -> list[Choice]:
    """The bundled samples (the task's rows, its preference pairs), then the uploads, newest first: name, rows,
    trained tokens and upload date; each labelled with its rows' shape."""
    samples = bundled(((SAMPLE_TRAIN, "Taiwanese addresses"), (SAMPLE_PAIRS, "address preference pairs")))
    return [choice for choice in samples if Path(choice.value).is_file()] + uploads(session)


def uploads(session: Session) -> list[Choice]:
    options = []
    for d in datasets.list_datasets(session=session):
        tokens = (d.description or {}).get("trained_tokens")
        parts = [d.name, f"{d.rows} rows" if d.rows is not None else "", f"{tokens:,} tokens" if tokens else ""]
        parts.append(f"uploaded {d.created_at:%Y-%m-%d %H:%M}")
        options.append(shaped(d.path, " · ".join(part for part in parts if part), d.shape))
    return options


def eval_dataset_options(session: Session) -> list[Choice]:
    """For the eval data: the bundled samples' own eval files, then the uploads (not the samples' training files,
    which would score the run on the rows it trained on)."""
    samples = bundled(((SAMPLE_EVAL, "its eval file"), (SAMPLE_PAIRS_EVAL, "its held-out preference pairs")))
    return [choice for choice in samples if Path(choice.value).is_file()] + uploads(session)


def continued_run_values(session: Session, run_id: str) -> dict[str, str]:
    """What a new form continuing this run takes from it: its base model. A run that is not there gives nothing:
    the submit says so beside the field that names it (app.objective_inputs)."""
    run = session.get(Run, run_id)
    base_model = (run.spec or {}).get("base_model") if run is not None else None
    return {"base_model": str(base_model)} if base_model else {}


def describe_model(directory: Path) -> str:
    """ "LlamaForCausalLM · 4.2 MB": the architecture from config.json and the size of its weights."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    architectures = config.get("architectures") if isinstance(config, dict) else None
    kind = architectures[0] if isinstance(architectures, list) and architectures else config.get("model_type", "?")
    weights = sum(f.stat().st_size for f in directory.glob("*.safetensors") if f.is_file())
    return f"{kind} · {human_bytes(weights)}" if weights else str(kind)


def model_options(settings: Settings, session: Session) -> list[Choice]:
    """The bundled model, then each directory holding a config.json under the allowed roots, but for the merged
    models of archived runs (archived runs leave the pickers)."""
    bundled = TINY_MODEL_DIR.resolve()
    options = [Choice(str(TINY_MODEL_DIR), f"Bundled tiny model · {describe_model(bundled)}")]
    seen = {bundled}
    archived = session.scalars(select(Run.id).where(Run.archived_at.is_not(None))).all()
    hidden = [RunDir.of(run_id, settings).root.resolve() for run_id in archived]
    for root in settings.allowed_model_roots:
        for directory in _model_dirs(root):
            resolved = directory.resolve()
            if resolved in seen or len(options) >= MAX_MODELS or any(resolved.is_relative_to(h) for h in hidden):
                continue
            seen.add(directory.resolve())
            where = f"in {directory.parent}"  # two models of one name are told apart by where they are
            label = f"{directory.name} · {describe_model(directory)} · {where}"
            # What the pre-flight check would refuse is shown, disabled, with its reason (no weights, no tokenizer).
            unusable = "; ".join(part.split(" (")[0] for part in model_files_missing(directory))
            options.append(
                Choice(str(directory), label + (f" · cannot be used: {unusable}" if unusable else ""), unusable)
            )
    return options


def _model_dirs(root: Path) -> list[Path]:
    """Directories with a config.json below `root`, breadth first; a model's own subfolders are not searched."""
    found: list[Path] = []
    level = [root]
    for _ in range(MAX_DEPTH + 1):
        below: list[Path] = []
        for directory in level:
            if (directory / "config.json").is_file() and directory != root:
                found.append(directory)
                continue
            try:
                with os.scandir(directory) as entries:
                    below += [
                        Path(e.path)
                        for e in entries
                        if e.is_dir(follow_symlinks=False) and not e.name.startswith(".") and e.name not in SKIPPED_DIRS
                    ]
            except OSError:
                continue
        level = sorted(below)[:2000]
    return found
