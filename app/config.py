"""Settings: data, not code. Each one has help text, read from the environment (or a `.env` file)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
# Shipped inside the package, so a normal (non-editable) install finds them.
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"
MIGRATIONS_DIR = PACKAGE_DIR / "migrations"
REPO_ROOT = PACKAGE_DIR.parent
# The bundled tiny model and sample dataset: beside the package in a checkout; an install elsewhere (an image)
# says where it put them.
ASSETS_DIR = Path(os.environ.get("LORADECK_ASSETS_DIR") or REPO_ROOT / "assets")
TINY_MODEL_DIR = ASSETS_DIR / "tiny-llama"
SAMPLE_DATASET_DIR = ASSETS_DIR / "datasets" / "tw-address"


class Settings(BaseSettings):
    """Operator settings. Environment variables are `LORADECK_<NAME>`, except the two URLs."""

    model_config = SettingsConfigDict(env_prefix="LORADECK_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=Path("data"),
        description="Where the SQLite file, the private Redis and every run's directory live.",
    )
    database_url: str = Field(
        default="",
        validation_alias=AliasChoices("DATABASE_URL", "LORADECK_DATABASE_URL"),
        description="SQLAlchemy URL of the database; empty means a SQLite file in the data dir.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6390/0",
        validation_alias=AliasChoices("REDIS_URL", "LORADECK_REDIS_URL"),
        description="Redis for the Celery broker and live events. `loradeck up` starts a private one here.",
    )
    host: str = Field(default="127.0.0.1", description="Address the web app binds to.")
    port: int = Field(default=8000, description="Port the web app listens on.")
    default_base_model: str = Field(
        default=str(TINY_MODEL_DIR),
        description="Base model the new-run form proposes: a local directory or a hub id.",
    )
    default_dataset: str = Field(
        default=str(SAMPLE_DATASET_DIR / "train.jsonl"),
        description="Dataset the new-run form proposes: a JSONL file of prompt/completion rows.",
    )
    allow_trust_remote_code: bool = Field(
        default=False,
        description="Let runs load models whose code lives in the model repository. Off: only stock code.",
    )
    max_upload_bytes: int = Field(
        default=2 * 1024**3,
        ge=1,
        description="Largest dataset file an upload may be; a larger one is refused while its bytes arrive, "
        "before more than this is stored anywhere.",
    )
    max_row_bytes: int = Field(
        default=1024**2,
        ge=1024,
        description="Largest single row of a dataset (a JSONL line, a CSV field, a Parquet row); a longer one is "
        "reported by its line.",
    )
    inspect_memory_mb: int = Field(
        default=2048,
        ge=64,
        description="MiB of memory checking and describing one dataset may take (in a child process of the "
        "inspect worker); a file that needs more is refused.",
    )
    inspect_time_limit_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Seconds checking and describing one dataset may take; a file that takes longer is refused.",
    )
    model_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Extra directories local base models may lie under (comma-separated), beside assets/ "
        "and the data dir; any other local path is refused. Hub ids are always allowed.",
    )
    dataset_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Extra directories dataset files may lie under (comma-separated), beside assets/ and the "
        "data dir; any other path is refused.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names (comma-separated) the web app answers to beside loopback names and IP addresses, "
        "e.g. the name a TLS proxy serves it under; a request for any other Host is refused (DNS rebinding).",
    )
    require_login: bool = Field(
        default=False,
        description="Ask for the admin password (pages) or an API token (JSON API) even on 127.0.0.1. "
        "Always on when the socket the web app listens on is not loopback-only.",
    )
    cookie_secure: bool = Field(
        default=False,
        description="Mark the session cookie Secure (sent over HTTPS only): turn on behind a TLS proxy. Off: "
        "Secure only when the request itself came over https.",
    )
    admin_password_hash: str = Field(
        default="",
        description="The admin password, hashed by `loradeck hash-password` (scrypt). Needed to bind beyond 127.0.0.1.",
    )
    api_token_hashes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="sha256 digests of the API tokens the JSON API accepts (comma-separated); "
        "`loradeck token` makes a token and its digest.",
    )
    stream_maxlen: int = Field(
        default=20_000,
        description="Events kept per run in its Redis Stream (older ones stay in the database).",
    )
    lease_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds without a heartbeat from the worker training a run before the run counts as lost: "
        "it is then interrupted and resumed from its last checkpoint on a live worker (at most 3 times).",
    )

    worker_memory_gb: float = Field(
        default=0.0,
        ge=0.0,
        description="GiB per GPU this worker offers to runs; a run whose pre-flight estimate needs more goes "
        "to a worker that offers enough. 0: the GPUs' own memory (no limit on a worker without GPUs).",
    )
    playground_models: int = Field(
        default=2,
        ge=1,
        description="Models a `generate` worker keeps loaded for the playground (a base with its adapters "
        "counts once); the least recently used goes first.",
    )
    playground_idle_s: float = Field(
        default=600.0,
        gt=0,
        description="Seconds a playground model stays loaded without a request before its worker lets it go.",
    )
    openai_pending_requests: int = Field(
        default=16,
        ge=1,
        description="Requests to `/v1/chat/completions` and `/v1/completions` that may wait for (or be answered "
        "by) the generate worker at once; past it a request is refused at once with 429 `rate_limit_exceeded`.",
    )

    @field_validator("model_roots", "dataset_roots", "api_token_hashes", "allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def allowed_model_roots(self) -> list[Path]:
        return [
            ASSETS_DIR.resolve(),
            self.data_dir.resolve(),
            *(root.expanduser().resolve() for root in self.model_roots),
        ]

    @property
    def allowed_dataset_roots(self) -> list[Path]:
        extra = [root.expanduser().resolve() for root in self.dataset_roots]
        return [ASSETS_DIR.resolve(), self.data_dir.resolve(), *extra]

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'loradeck.db').resolve()}"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir.resolve() / "runs"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir.resolve() / "datasets"


@lru_cache
def get_settings() -> Settings:
    return Settings()
