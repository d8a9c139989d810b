"""Database engine and sessions. The schema comes from Alembic migrations only (see `migrate`)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from app.config import MIGRATIONS_DIR, get_settings

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the web read while the worker writes metrics; the busy timeout rides out
    # the short write locks instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if make_url(url).drivername == "postgresql+psycopg":
        # Times come back in UTC, as they do from SQLite, whatever the server's TimeZone: pages show the
        # same clock on either database.
        engine = create_engine(url, pool_pre_ping=True, connect_args={"options": "-c TimeZone=UTC"})
        event.listen(engine, "connect", _postgres_text_without_nul)
        return engine
    return create_engine(url, pool_pre_ping=True)


@lru_cache
def _nul_free_str_dumper() -> type:
    from psycopg.types.string import StrDumperUnknown

    class NulFreeStrDumper(StrDumperUnknown):
        def dump(self, obj: str) -> Any:
            return super().dump(obj.replace("\x00", "\ufffd"))

    return NulFreeStrDumper


def _postgres_text_without_nul(dbapi_connection: Any, _record: Any) -> None:
    # SQLite's text holds NUL, PostgreSQL's cannot (psycopg refuses such a value before sending it). A NUL in
    # a value to store or to look up becomes U+FFFD, the mark for a character that could not be kept: a run
    # id or a search with one in it finds nothing (404, no rows) instead of failing with a 500, and an error
    # message quoting one is stored.
    dbapi_connection.adapters.register_dumper(str, _nul_free_str_dumper())


@lru_cache
def get_engine() -> Engine:
    settings = get_settings()
    if settings.resolved_database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(settings.resolved_database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


def get_db() -> Iterator[Session]:
    """FastAPI dependency: one session per request."""
    with get_sessionmaker()() as session:
        yield session


def alembic_config(url: str | None = None) -> AlembicConfig:
    """Alembic's configuration for the migrations in `app/migrations/`, on `url` (default: the configured
    database). No ini file: the package carries all it needs."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url or get_settings().resolved_database_url)
    return config


def schema_problem() -> str | None:
    """What keeps the configured database from serving this version, naming the command that fixes it; None when
    its schema is at the migrations' head, and when it cannot be reached now (the health check reports that)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.exc import OperationalError

    script = ScriptDirectory.from_config(alembic_config())
    heads = set(script.get_heads())
    try:
        with get_engine().connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    except OperationalError:
        return None
    if current == heads:
        return None
    where = get_engine().url.render_as_string(hide_password=True)
    unknown = current - {revision.revision for revision in script.walk_revisions()}
    if unknown:
        newer = ", ".join(sorted(unknown))
        return f"the database {where} was migrated by a newer loradeck (revision {newer}): run that version"
    found = f"at revision {', '.join(sorted(current))}" if current else "no tables yet"
    return f"the database {where} is not migrated to this version ({found}): run `loradeck migrate` first"


def migrate(url: str | None = None) -> None:
    """Apply every Alembic migration (`alembic upgrade head`) to the configured database."""
    from alembic import command

    if (url or get_settings().resolved_database_url).startswith("sqlite"):
        get_settings().data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")
