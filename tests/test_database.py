"""Opening databases: URLs, masking, SQLite files that must exist, read-only transactions."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from snapshot_backfill import backfill
from snapshot_backfill.database import (
    ENV_VAR,
    ForeignKeysError,
    check_connection,
    display_url,
    foreign_keys_off,
    mask_password,
    open_engine,
    read_only,
    resolve_url,
    sqlite_path,
    transaction_without_foreign_keys,
    uri_path,
    write_transaction,
)
from snapshot_backfill.errors import BadInputError, DatabaseUnavailableError
from snapshot_backfill.journal import journal
from snapshot_backfill.testing import fingerprint
from snapshot_backfill.testing.backends import MARIADB, Backend
from snapshot_backfill.testing.expectations import StateInfo

from platforms import QUESTION_MARK_NAMES


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:secret@db/x", "postgresql://u:***@db/x"),
        (
            "mysql+pymysql://root:p%40ss@127.0.0.1:3306/test",
            "mysql+pymysql://root:***@127.0.0.1:3306/test",
        ),
        (
            "see postgres://a:b@h/d and mysql://c:d@h/e",
            "see postgres://a:***@h/d and mysql://c:***@h/e",
        ),
        ("postgresql://nopassword@db/x", "postgresql://nopassword@db/x"),
        ("/plain/path.sqlite", "/plain/path.sqlite"),
    ],
)
def test_mask_password_hides_every_password(given: str, expected: str) -> None:
    assert mask_password(given) == expected


def test_display_url_never_shows_the_password() -> None:
    url = resolve_url("postgresql://user:hunter2@db.example:5432/bakery")
    assert "hunter2" not in display_url(url)
    assert display_url(url) == "postgresql+psycopg://user:***@db.example:5432/bakery"


def test_bare_path_means_a_sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = resolve_url("bake.sqlite")
    assert url.get_backend_name() == "sqlite"
    assert url.database == str(tmp_path / "bake.sqlite")


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("postgresql://h/db", "postgresql+psycopg"),
        ("postgres://h/db", "postgresql+psycopg"),
        ("mysql://h/db", "mysql+pymysql"),
        ("mariadb://h/db", "mariadb+pymysql"),
        ("postgresql+psycopg://h/db", "postgresql+psycopg"),
        ("sqlite:///x.db", "sqlite"),
    ],
)
def test_short_urls_get_the_installed_drivers(given: str, driver: str) -> None:
    assert resolve_url(given).drivername == driver


def test_the_environment_variable_is_the_fallback() -> None:
    url = resolve_url(None, {ENV_VAR: "postgresql://u@h/from_env"})
    assert url.database == "from_env"
    assert resolve_url("mysql://u@h/given", {ENV_VAR: "postgresql://u@h/env"}).database == "given"


def test_no_url_at_all_says_how_to_give_one() -> None:
    with pytest.raises(BadInputError, match=f"--database-url.*{ENV_VAR}"):
        resolve_url(None, {})


def test_an_invalid_url_is_reported_with_its_password_masked() -> None:
    with pytest.raises(BadInputError) as caught:
        resolve_url("postgresql://user:topsecret@host:notaport/db")
    assert "invalid database URL" in str(caught.value)
    assert "topsecret" not in str(caught.value)


def test_a_missing_sqlite_file_is_refused_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo.sqlite"
    with pytest.raises(DatabaseUnavailableError, match="does not exist"):
        open_engine(resolve_url(str(path)))
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_create_is_explicit(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    engine = open_engine(resolve_url(str(path)), create=True)
    try:
        check_connection(engine)
    finally:
        engine.dispose()
    assert path.exists()


def test_a_directory_is_not_a_database(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailableError, match="is a directory"):
        open_engine(resolve_url(str(tmp_path)))


def test_a_file_that_is_not_a_database_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("this is not a database, just text that is long enough to have a header\n" * 20)
    before = path.read_bytes()
    engine = open_engine(resolve_url(str(path)))
    try:
        with pytest.raises(DatabaseUnavailableError, match="not a SQLite database"):
            check_connection(engine)
    finally:
        engine.dispose()
    assert path.read_bytes() == before


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Path:
    path = tmp_path / "db.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("INSERT INTO t (v) VALUES ('a')")
    conn.close()
    return path


def test_sqlite_connections_enforce_foreign_keys(sqlite_db: Path) -> None:
    engine = open_engine(resolve_url(str(sqlite_db)))
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    finally:
        engine.dispose()


def test_read_only_is_enforced_by_sqlite_itself(sqlite_db: Path) -> None:
    before = sqlite_db.read_bytes()
    engine = open_engine(resolve_url(str(sqlite_db)))
    try:
        with read_only(engine) as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1
            with pytest.raises(OperationalError, match="readonly"):
                conn.exec_driver_sql("INSERT INTO t (v) VALUES ('b')")
        # The pooled connection is writable again for the next user.
        with engine.begin() as conn:
            conn.exec_driver_sql("SELECT 1")
            assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 0
    finally:
        engine.dispose()
    assert sqlite_db.read_bytes() == before


def test_write_transaction_takes_the_write_lock_up_front(sqlite_db: Path) -> None:
    engine = open_engine(resolve_url(str(sqlite_db)))
    other = sqlite3.connect(sqlite_db, timeout=0)
    try:
        # Nothing written yet, but BEGIN IMMEDIATE already holds the write lock.
        refused = pytest.raises(sqlite3.OperationalError, match="locked")
        with engine.connect() as conn, write_transaction(conn), refused:
            other.execute("INSERT INTO t (v) VALUES ('other')")
        other.execute("INSERT INTO t (v) VALUES ('after')")
        other.commit()
    finally:
        other.close()
        engine.dispose()


def test_a_server_that_is_not_there_is_one_clear_error() -> None:
    engine = open_engine(resolve_url("postgresql://nobody:pw@127.0.0.1:1/none?connect_timeout=2"))
    try:
        with pytest.raises(DatabaseUnavailableError) as caught:
            check_connection(engine)
    finally:
        engine.dispose()
    assert "cannot open postgresql+psycopg://nobody:***@127.0.0.1:1/none" in str(caught.value)
    assert "pw@" not in str(caught.value)


def test_engine_url_round_trip_keeps_sqlite_path(sqlite_db: Path) -> None:
    engine = open_engine(resolve_url(str(sqlite_db)))
    try:
        assert display_url(engine.url) == str(sqlite_db)
        assert isinstance(engine, sa.Engine)
    finally:
        engine.dispose()


def _statistics_stamp(engine: sa.Engine) -> Any:
    """When production_runs' planner statistics were last refreshed (None: never)."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return "sqlite_stat1" if sa.inspect(conn).has_table("sqlite_stat1") else None
        if engine.dialect.name == "postgresql":
            query = "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'production_runs'"
        else:
            query = (
                "SELECT last_update FROM mysql.innodb_table_stats "
                "WHERE database_name = DATABASE() AND table_name = 'production_runs'"
            )
        stamp = conn.execute(sa.text(query)).scalar()
        conn.rollback()
    return stamp


def test_a_run_and_a_rollback_refresh_server_statistics_but_not_sqlites(
    backend: Backend, build_state: Callable[[str], StateInfo]
) -> None:
    info = build_state("partially_migrated")
    engine = backend.make_engine()
    before = _statistics_stamp(engine)
    time.sleep(1.1)  # MariaDB stamps its statistics to the second

    backfill.run(engine, batch_size=info.batch_size)
    after_run = _statistics_stamp(engine)
    time.sleep(1.1)
    backfill.rollback(engine)
    after_rollback = _statistics_stamp(engine)

    if backend.is_sqlite:
        assert before is after_run is after_rollback is None, (
            "the migrator must never create sqlite_stat1 (the application runs no ANALYZE)"
        )
        return
    assert after_run is not None, "no statistics after a run"
    assert before is None or after_run > before
    assert after_rollback > after_run, "statistics not refreshed by the rollback"


def test_a_rollback_that_only_unlinks_runs_refreshes_server_statistics(
    backend: Backend, build_state: Callable[[str], StateInfo]
) -> None:
    if backend.is_sqlite:
        pytest.skip("SQLite's statistics are never refreshed (the test above)")
    build_state("from_sample_data")
    engine = backend.make_engine()
    backfill.run(engine)
    with engine.begin() as conn:  # only the runs linked to snapshots that existed are left
        conn.execute(sa.delete(journal).where(journal.c.created_snapshot == sa.true()))
    after_run = _statistics_stamp(engine)
    time.sleep(1.1)
    report = backfill.rollback(engine)
    assert (report.runs_unlinked, report.snapshots_deleted) == (2, 0), report
    assert _statistics_stamp(engine) > after_run, "statistics not refreshed by the rollback"


def test_a_no_op_run_leaves_the_statistics_alone(
    backend: Backend, build_state: Callable[[str], StateInfo]
) -> None:
    build_state("already_migrated")
    engine = backend.make_engine()
    if not backend.is_sqlite:
        # Settled first: InnoDB recalculates the statistics of a freshly filled table in the
        # background, which would look like the no-op run refreshing them.
        with engine.connect() as conn:
            table = "TABLE production_runs" if backend.kind == "mariadb" else "production_runs"
            conn.exec_driver_sql(f"ANALYZE {table}").close()
            conn.commit()
    before = _statistics_stamp(engine)
    time.sleep(1.1)
    report = backfill.run(engine)
    assert report.migrated + report.linked_existing == 0
    assert _statistics_stamp(engine) == before


@pytest.mark.parametrize(
    "name", ["bake#1.db", pytest.param("bake?.db", marks=QUESTION_MARK_NAMES), "bake 100%.db"]
)
def test_a_path_with_uri_characters_is_opened_whole(tmp_path: Path, name: str) -> None:
    database = tmp_path / name
    engine = open_engine(resolve_url(str(database)), create=True)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE kept (x INTEGER)")
    engine.dispose()
    assert [p.name for p in tmp_path.iterdir()] == [name], "a shorter path was created"

    engine = open_engine(resolve_url(str(database)))
    try:
        assert sqlite_path(engine.url) == database.absolute()
        with engine.connect() as conn:
            assert sa.inspect(conn).has_table("kept")
    finally:
        engine.dispose()


def test_foreign_keys_off_lets_a_referenced_row_go_and_comes_back_on(
    backend: Backend, build_state: Callable[[str], StateInfo]
) -> None:
    info = build_state("partially_migrated")
    engine = backend.make_engine()
    recipe_id, other_id = sorted(set(info.run_recipe.values()) & info.recipe_ids)[:2]
    delete = sa.text("DELETE FROM recipes WHERE id = :id")
    with transaction_without_foreign_keys(engine) as conn:
        conn.execute(delete, {"id": recipe_id})
    with engine.connect() as conn:  # committed, and the checks are back on every connection
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM recipes WHERE id = :id"), {"id": recipe_id}
            ).scalar()
            == 0
        )
        with pytest.raises(sa.exc.IntegrityError):
            conn.execute(delete, {"id": other_id})
        conn.rollback()


def test_sqlite_foreign_keys_cannot_be_switched_inside_a_transaction(
    sqlite_backend: Backend,
) -> None:
    engine = sqlite_backend.make_engine()
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")  # our engines begin for real: a transaction is open
        with pytest.raises(ForeignKeysError, match="inside a transaction"), foreign_keys_off(conn):
            pass
        conn.rollback()


def test_a_file_uri_names_a_windows_path_on_windows() -> None:
    # Path.as_uri() writes C:\Users\a#b\x.db as file:///C:/Users/a%23b/x.db on Windows.
    assert uri_path("/C:/Users/a%23b/x.db", windows=True) == "C:\\Users\\a#b\\x.db"
    assert uri_path("/home/a%23b/x.db", windows=False) == "/home/a#b/x.db"


@pytest.mark.parametrize(
    "backend_kind", [pytest.param(MARIADB, marks=pytest.mark.mariadb)], indirect=True
)
def test_a_mariadb_url_migrates_verifies_and_rolls_back_as_a_mysql_url_does(
    backend: Backend, build_state: Callable[[str], StateInfo]
) -> None:
    """``mariadb://`` (documented) gives SQLAlchemy's "mariadb" dialect, not "mysql": every
    MySQL branch (the lock, the batch's row locks, the payload column, its capacity, the
    statistics) must know that name too. The tests' own URLs are ``mysql+pymysql``."""
    info = build_state("from_sample_data")
    before = fingerprint.take(backend.make_engine())
    engine = open_engine(backend.url.set(drivername="mariadb+pymysql"))
    try:
        assert engine.dialect.name == "mariadb"
        report = backfill.run(engine, batch_size=info.batch_size)
        assert report.ok, report
        assert (report.migrated, report.linked_existing) == (
            len(info.to_migrate),
            len(info.to_link_existing),
        ), report
        assert backfill.verify(engine).ok
        undone = backfill.rollback(engine, batch_size=info.batch_size)
        assert undone.runs_unlinked == len(info.work), undone
    finally:
        engine.dispose()
    fingerprint.assert_same(before, fingerprint.take(backend.make_engine()), "rolled back")
