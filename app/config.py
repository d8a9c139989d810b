"""Settings: data, not code. Each one has help text, read from the environment (or a `.env` file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"
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
        description="Largest dataset file an upload may be; a larger one is refused before it is stored.",
    )
    stream_maxlen: int = Field(
        default=20_000,
        description="Events kept per run in its Redis Stream (older ones stay in the database).",
    )

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
