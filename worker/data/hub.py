"""Where a worker reads a base model from: a local directory that the pre-flight resolved under the allowed
roots (so an absolute path), or a hub id, read through the Hugging Face cache and never as a path.

transformers opens any existing directory as a local model, so a hub id such as `app/static` would be read
relative to the worker's working directory: outside the roots, and its answer ("Unrecognized model" against
"not in the cache") would tell whether such a folder exists. A hub id becomes its cache snapshot's folder
before anything loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

# What loading, merging and exporting a base reads: weights as safetensors only, configs and tokenizers.
MODEL_FILES = ["*.safetensors", "*.json", "*.model", "*.txt", "*.jinja", "LICENSE*", "NOTICE*", "USE_POLICY*"]


def model_source(base_model: str, *, download: bool = True) -> str:
    """The folder to load `base_model` from. A hub id is fetched into the Hugging Face cache when `download`
    (else only found there); an error is an OSError saying which, as transformers' own loaders raise."""
    path = Path(base_model).expanduser()
    if path.is_absolute():
        return str(path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return str(snapshot_download(base_model, allow_patterns=MODEL_FILES, local_files_only=not download))
    except HFValidationError as exc:  # a ValueError: not a repository id at all
        raise OSError(f"{base_model} is not a hub id: {str(exc).splitlines()[0]}") from None


def public_name(base_model: str) -> str:
    """How files a user downloads (an adapter's config and model card) name the base: a hub id as given, a
    local directory by its folder's name, since this server's paths are nobody else's business."""
    return Path(base_model).name if Path(base_model).expanduser().is_absolute() else base_model


def name_the_base(folder: Path, base_model: str) -> None:
    """Once PEFT saved an adapter in `folder`: its adapter_config.json and README.md (front matter and tags)
    name the base by `public_name`. PEFT writes the folder it loaded the base from, and needs it while saving
    (it compares the vocabulary with the base's config.json), so the names are changed after, not before."""
    config_file, card = folder / "adapter_config.json", folder / "README.md"
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text(encoding="utf-8"))
    loaded_from, public = config.get("base_model_name_or_path"), public_name(base_model)
    if not loaded_from or loaded_from == public:
        return
    config["base_model_name_or_path"] = public
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    if card.is_file():
        card.write_text(card.read_text(encoding="utf-8").replace(loaded_from, public), encoding="utf-8")
