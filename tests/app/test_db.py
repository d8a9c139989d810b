"""The database layer on SQLite and on PostgreSQL alike (`make test` runs these on both): migrated up, the
database holds what the models describe; every migration goes down and up again; text PostgreSQL cannot hold
(NUL) neither fails a lookup nor a write."""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import IntegrityError

from app import runs
from app.config import get_settings
from app.db import alembic_config, get_engine, get_sessionmaker
from app.models import Base, OpenAIJob, Run, RunStatus
from app.schemas import RunSpec
from tests.conftest import TEST_DATABASE_URL


def schema_differences() -> list[Any]:
    """What `alembic revision --autogenerate` would write: the models against the database, types included."""
    with get_engine().connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(context, Base.metadata))


def test_tests_run_on_the_database_they_were_given(loradeck_env: dict[str, str]) -> None:
    expected = "postgresql" if TEST_DATABASE_URL.startswith("postgresql") else "sqlite"
    assert get_engine().dialect.name == expected, get_settings().resolved_database_url


def test_migrations_build_the_schema_the_models_describe(loradeck_env: dict[str, str]) -> None:
    assert schema_differences() == []


def test_every_migration_goes_down_and_up_again(loradeck_env: dict[str, str]) -> None:
    config = alembic_config()
    command.downgrade(config, "base")
    get_engine().dispose()  # forget what the pool's connections cached about the old tables
    assert set(inspect(get_engine()).get_table_names()) <= {"alembic_version"}
    command.upgrade(config, "head")
    assert {"runs", "metrics", "artifacts", "datasets"} <= set(inspect(get_engine()).get_table_names())
    assert schema_differences() == []


def test_a_nul_in_an_id_or_a_search_finds_nothing(loradeck_env: dict[str, str]) -> None:
    from app.main import app

    with TestClient(app) as client:
        assert client.get("/api/v1/runs/a%00b").status_code == 404
        assert client.get("/api/v1/artifacts/a%00b/download").status_code == 404
        assert client.get("/", params={"q": "a\x00b"}).status_code == 200


def test_an_error_message_quoting_a_nul_is_stored(loradeck_env: dict[str, str]) -> None:
    with get_sessionmaker()() as session:
        run_id = runs.create_run(session=session, spec=RunSpec(max_steps=2)).id
        assert runs.finish_run(session=session, run_id=run_id, status=RunStatus.failed, error="byte \x00 in line 3")
    with get_sessionmaker()() as session:
        error = runs.get_run(session=session, run_id=run_id).error
    assert error in ("byte \x00 in line 3", "byte \ufffd in line 3")


def test_the_schema_check_names_what_to_run(loradeck_env: dict[str, str]) -> None:
    """At head nothing is wrong; one migration behind says `loradeck migrate`; a revision this version does not
    know (a newer loradeck migrated it) says so instead of offering to migrate it."""
    from sqlalchemy import text

    from app.db import schema_problem

    assert schema_problem() is None
    command.downgrade(alembic_config(), "-1")
    behind = schema_problem()
    assert behind is not None and "at revision" in behind and "loradeck migrate" in behind
    with get_engine().begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'from_the_future'"))
    newer = schema_problem()
    assert newer is not None and "newer loradeck" in newer and "from_the_future" in newer


def test_a_run_and_the_rows_beside_it_are_stored_together_or_not_at_all(loradeck_env: dict[str, str]) -> None:
    """An OpenAI job's request row is committed with its run, before the run is queued: a worker or a reader
    never meets the run without it, and a row that cannot be stored leaves no run behind."""

    def job(run: Run, training_file: str | None) -> list[OpenAIJob]:
        return [OpenAIJob(run_id=run.id, model="tiny-llama", training_file=training_file, hyperparameters={})]

    with get_sessionmaker()() as session:
        run_id = runs.create_run(session=session, spec=RunSpec(max_steps=2), beside=lambda run: job(run, "file-1")).id
    with get_sessionmaker()() as session:
        assert session.get(OpenAIJob, run_id).training_file == "file-1"  # type: ignore[union-attr]
        with pytest.raises(IntegrityError):  # training_file is required
            runs.create_run(session=session, spec=RunSpec(max_steps=2), beside=lambda run: job(run, None))
        session.rollback()
        assert session.scalar(select(func.count()).select_from(Run)) == 1
