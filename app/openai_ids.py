"""Model ids of OpenAI's API as loradeck names its models: a base model by a stable id, a fine-tune as
`ft:<base>:<suffix or org>:<run id>`, one of its checkpoints as `ft:<base>:<suffix or org>:<run id>:ckpt-step-<n>`.

A base's id is the name of its directory when it lies under an allowed model root (the bundled model is
`tiny-llama`), else the hub id it was given as (`Qwen/Qwen2.5-0.5B`). Every id round-trips: `resolve_base` gives
back the `base_model` a run is started with, `parse_fine_tuned` the run and step an `ft:` id names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from app.config import TINY_MODEL_DIR, Settings

ORG = "loradeck"  # OpenAI puts the organisation where no suffix was given
SUFFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")  # OpenAI's suffix: up to 64 characters; ours keeps ids short
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FINE_TUNED = re.compile(
    r"^ft:(?P<base>[^:]+):(?P<owner>[A-Za-z0-9_.-]+):(?P<run>[0-9a-f]{1,32})(?::ckpt-step-(?P<step>[0-9]{1,9}))?$"
)


@dataclass(frozen=True)
class FineTuned:
    base: str  # the base's model id
    owner: str  # the job's suffix, or ORG
    run_id: str
    step: int | None = None  # a checkpoint's step; None: the run's adapter (or merged model)


def base_id(base_model: str, settings: Settings) -> str:
    """The model id of a run's `base_model` (a local directory or a hub id)."""
    if _HUB_ID.match(base_model) and not Path(base_model).expanduser().exists():
        return base_model
    path = Path(base_model).expanduser().resolve()
    if path == TINY_MODEL_DIR.resolve() or any(path.parent == root for root in settings.allowed_model_roots):
        return path.name
    return base_model


def local_bases(settings: Settings) -> dict[str, Path]:
    """Model directories (a config.json inside) directly under an allowed model root, by id; the bundled model
    first. A name found under two roots is the first root's."""
    found: dict[str, Path] = {TINY_MODEL_DIR.name: TINY_MODEL_DIR}
    for root in settings.allowed_model_roots:
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if child.name not in found and (child / "config.json").is_file():
                found[child.name] = child
    return found


def resolve_base(model_id: str, settings: Settings) -> str | None:
    """The `base_model` to train or answer with for a base's model id: a local directory's path, or the hub id
    itself; None when it is neither (an `ft:` id, a path, a name no root holds)."""
    if model_id in (local := local_bases(settings)):
        return str(local[model_id])
    if _HUB_ID.match(model_id):
        return model_id
    return None


def fine_tuned_id(base: str, suffix: str | None, run_id: str, step: int | None = None) -> str:
    model = f"ft:{base}:{suffix or ORG}:{run_id}"
    return model if step is None else f"{model}:ckpt-step-{step}"


def parse_fine_tuned(model_id: str) -> FineTuned | None:
    """The run (and checkpoint) an `ft:` id names; None for any other id."""
    found = _FINE_TUNED.match(model_id)
    if found is None:
        return None
    step = found.group("step")
    return FineTuned(found.group("base"), found.group("owner"), found.group("run"), int(step) if step else None)
