"""Loading sample data where the database, not the file, is the problem: an unsupported or
unreachable database, a connection already in a transaction, rows the database would leave
dangling. Each is one clear error and leaves nothing behind."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import StaticPool

from snapshot_backfill.database import open_engine
from snapshot_backfill.errors import BadInputError, DatabaseUnavailableError
from snapshot_backfill.sample_data import (
    DEFAULT_SAMPLE_PATH,
    SampleData,
    SampleLoadError,
    SnapshotEntry,
    load_sample,
    read_sample,
)
from snapshot_backfill.testing.backends import Backend


@pytest.fixture(scope="module")
def shipped_sample() -> SampleData:
    return read_sample(DEFAULT_SAMPLE_PATH)


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Path:
    return tmp_path / "bake.db"


@pytest.fixture
def engine(sqlite_file: Path) -> Iterator[Engine]:
    created = open_engine(URL.create("sqlite", database=str(sqlite_file)), create=True)
    try:
        yield created
    finally:
        created.dispose()


def table_names(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as conn:
        found = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {row[0] for row in found}


def test_an_unsupported_backend_is_refused_before_connecting() -> None:
    statements: list[Any] = []
    mock = sa.create_mock_engine(
        "mssql+pymssql://baker@db.invalid/bakery", lambda sql, *a, **k: statements.append(sql)
    )
    with pytest.raises(BadInputError) as caught:
        load_sample(cast(Engine, mock))
    assert str(caught.value) == "unsupported database backend: mssql"
    assert statements == []


def test_a_sqlite_file_that_cannot_be_opened(tmp_path: Path) -> None:
    missing_dir = tmp_path / "no-such-dir"
    engine = sa.create_engine(URL.create("sqlite", database=str(missing_dir / "bake.db")))
    try:
        with pytest.raises(DatabaseUnavailableError) as caught:
            load_sample(engine)
    finally:
        engine.dispose()
    assert str(caught.value) == (
        f"cannot open {missing_dir / 'bake.db'}: unable to open database file"
    )
    assert not missing_dir.exists()


def test_an_unreachable_server() -> None:
    # Nothing listens on port 1 of the loopback interface: the connection is refused.
    url = URL.create("postgresql+psycopg", username="baker", host="127.0.0.1", port=1, database="b")
    engine = open_engine(url)
    try:
        with pytest.raises(DatabaseUnavailableError) as caught:
            load_sample(engine)
    finally:
        engine.dispose()
    message = str(caught.value)
    assert message.startswith("cannot open postgresql+psycopg://baker@127.0.0.1:1/b: ")
    assert "refused" in message.lower()


def test_a_connection_inside_a_transaction_is_refused() -> None:
    # One shared in-memory connection (StaticPool) on which the caller has a transaction open:
    # SQLite ignores the foreign-keys pragma there, so the loader refuses rather than load
    # with the checks in an unknown state.
    engine = sa.create_engine("sqlite://", poolclass=StaticPool)
    try:
        with engine.connect() as caller:
            caller.exec_driver_sql("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
            caller.exec_driver_sql("INSERT INTO notes (body) VALUES ('keep me')")
            with pytest.raises(SampleLoadError) as caught:
                load_sample(engine)
            assert str(caught.value) == (
                "cannot switch SQLite foreign keys inside a transaction; nothing was loaded"
            )
            assert set(sa.inspect(caller).get_table_names()) == {"notes"}
    finally:
        engine.dispose()


def test_a_reference_the_file_may_not_leave_dangling_undoes_the_load(
    engine: Engine, sqlite_file: Path, shipped_sample: SampleData
) -> None:
    # Validation refuses a snapshot of a run whose recipe is deleted (the application could not
    # have deleted that recipe); a SampleData built in code skips validation, and the database
    # check after the deletes catches the dangling snapshot instead.
    deleted = set(shipped_sample.deleted_recipes)
    orphan = next(run for run in shipped_sample.production_runs if run.recipe_slug in deleted)
    snapshot = SnapshotEntry(
        run_index=orphan.index,
        linked=False,
        scale_factor=1.0,
        snapshot_date=datetime(2024, 1, 2, 3, 4, 5),
        is_backfilled=False,
        recipe_data={},
        json_path="(built in code)",
    )
    broken = dataclasses.replace(
        shipped_sample, recipe_snapshots=(*shipped_sample.recipe_snapshots, snapshot)
    )
    with pytest.raises(SampleLoadError) as caught:
        load_sample(engine, broken)
    assert str(caught.value) == (
        f"loading {DEFAULT_SAMPLE_PATH} left unexpected dangling references "
        "(recipe_snapshots -> recipes); nothing was loaded"
    )
    assert table_names(sqlite_file) == set()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_snapshots_that_are_all_unlinked_link_no_run(
    engine: Engine, sqlite_file: Path, shipped_sample: SampleData
) -> None:
    unlinked = tuple(dataclasses.replace(s, linked=False) for s in shipped_sample.recipe_snapshots)
    report = load_sample(engine, dataclasses.replace(shipped_sample, recipe_snapshots=unlinked))
    assert report.inserted["recipe_snapshots"] == len(unlinked) > 0
    assert report.expected is not None
    assert report.expected.already_linked == 0
    assert report.expected.link_existing == len(unlinked)
    with closing(sqlite3.connect(sqlite_file)) as conn:
        linked = conn.execute(
            "SELECT count(*) FROM production_runs WHERE recipe_snapshot_id IS NOT NULL"
        ).fetchone()
        snapshots_with_runs = conn.execute(
            "SELECT count(*) FROM recipe_snapshots s JOIN production_runs r "
            "ON r.id = s.production_run_id"
        ).fetchone()
    assert linked == (0,)
    assert snapshots_with_runs == (len(unlinked),)


def test_a_row_the_database_refuses_leaves_no_tables(
    backend: Backend, shipped_sample: SampleData
) -> None:
    # Valid for the parser, refused by the num_batches CHECK constraint of every backend:
    # PostgreSQL and SQLite roll the DDL back with the rows, MariaDB (whose DDL commits at
    # once) drops the tables it created.
    last = shipped_sample.production_runs[-1]
    refused = dataclasses.replace(last, columns={**last.columns, "num_batches": 0})
    sample = dataclasses.replace(
        shipped_sample, production_runs=(*shipped_sample.production_runs[:-1], refused)
    )
    engine = backend.make_engine()
    with pytest.raises(SampleLoadError) as caught:
        load_sample(engine, sample)
    message = str(caught.value)
    assert message.startswith(f"cannot load {DEFAULT_SAMPLE_PATH} into ")
    assert message.endswith("; nothing was loaded")
    assert sa.inspect(engine).get_table_names() == []
    # Nothing stayed half-done either: the same database takes the valid sample afterwards.
    assert load_sample(engine, shipped_sample).inserted["production_runs"] == len(
        shipped_sample.production_runs
    )
