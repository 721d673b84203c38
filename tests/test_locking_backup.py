"""The migration lock and the SQLite backup: waiting, giving up, releasing, and every way a
backup can fail leaving no partial file behind."""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from snapshot_backfill import backup as backup_module
from snapshot_backfill.backup import backup_sqlite, default_backup_path
from snapshot_backfill.database import display_url
from snapshot_backfill.errors import EXIT_LOCKED, BadInputError, LockedError
from snapshot_backfill.locking import migration_lock, sqlite_lock_path
from snapshot_backfill.testing.backends import Backend

from platforms import QUESTION_MARK_NAMES

WAIT_S = 0.4


def lock_message(url: URL, waited: float) -> str:
    return (
        f"another snapshot-backfill is working on {display_url(url)} (waited {waited:g}s for "
        "its lock); let it finish, or wait longer with --lock-timeout"
    )


def assert_held_elsewhere(engine: Engine) -> None:
    """Fail unless another connection holds the migration lock of ``engine``'s database."""
    with pytest.raises(LockedError), migration_lock(engine, timeout=0):
        pytest.fail("the lock was taken twice")


# --------------------------------------------------------------------------------------------
# The migration lock, on every backend
# --------------------------------------------------------------------------------------------


def test_a_second_migrator_waits_then_gives_up(backend: Backend) -> None:
    holder, waiter = backend.make_engine(), backend.make_engine()
    with migration_lock(holder, timeout=0):
        started = time.monotonic()
        with pytest.raises(LockedError) as caught, migration_lock(waiter, timeout=WAIT_S):
            pytest.fail("the lock was taken twice")
        waited = time.monotonic() - started
    assert str(caught.value) == lock_message(waiter.url, WAIT_S)
    assert caught.value.exit_code == EXIT_LOCKED
    assert waited >= WAIT_S * 0.9, f"gave up after {waited:.3f}s, before its {WAIT_S}s"
    # Released at the end of the holder's block: the waiter gets it at once.
    with migration_lock(waiter, timeout=0):
        pass


def test_a_zero_timeout_gives_up_at_once(backend: Backend) -> None:
    holder, waiter = backend.make_engine(), backend.make_engine()
    with migration_lock(holder, timeout=0):
        started = time.monotonic()
        with pytest.raises(LockedError) as caught, migration_lock(waiter, timeout=0):
            pytest.fail("the lock was taken twice")
        assert time.monotonic() - started < 5
    assert str(caught.value) == lock_message(waiter.url, 0)


def test_the_lock_is_released_when_the_block_fails(backend: Backend) -> None:
    first, second = backend.make_engine(), backend.make_engine()
    with pytest.raises(RuntimeError, match="batch failed"), migration_lock(first, timeout=0):
        raise RuntimeError("batch failed")
    with migration_lock(second, timeout=0):
        assert_held_elsewhere(first)


def test_the_lock_belongs_to_one_database(backend: Backend) -> None:
    # Two databases on one server (or two SQLite files) never wait for each other.
    mine, theirs = backend.make_engine(), backend.sibling().make_engine()
    with migration_lock(mine, timeout=0), migration_lock(theirs, timeout=0):
        assert_held_elsewhere(backend.make_engine())


def test_the_sqlite_lock_file_stays_next_to_the_database(sqlite_backend: Backend) -> None:
    assert sqlite_backend.path is not None
    lock_file = sqlite_lock_path(sqlite_backend.path)
    assert lock_file == sqlite_backend.path.with_name(
        sqlite_backend.path.name + ".snapshot-backfill.lock"
    )
    engine = sqlite_backend.make_engine()
    with migration_lock(engine, timeout=0):
        assert lock_file.exists()
    # Removing it would let a waiter on the old inode and a newcomer both hold "the" lock. On
    # Windows, filelock's own release removes it, whatever the caller wants.
    if sys.platform != "win32":
        assert lock_file.exists()
    with migration_lock(engine, timeout=0):
        pass


def test_an_in_memory_database_needs_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    engine = sa.create_engine("sqlite://")
    try:
        with migration_lock(engine, timeout=0), migration_lock(engine, timeout=0):
            pass
    finally:
        engine.dispose()
    assert list(tmp_path.iterdir()) == []


def test_an_uncreatable_lock_file_is_a_clear_error(sqlite_backend: Backend) -> None:
    assert sqlite_backend.path is not None
    sqlite_lock_path(sqlite_backend.path).mkdir()
    engine = sqlite_backend.make_engine()
    with pytest.raises(BadInputError, match="lock"), migration_lock(engine, timeout=0):
        pytest.fail("locked through a directory")


# --------------------------------------------------------------------------------------------
# The SQLite backup
# --------------------------------------------------------------------------------------------


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """A small SQLite database file with one table and three rows."""
    path = tmp_path / "bake.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE recipes (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        conn.executemany(
            "INSERT INTO recipes (name) VALUES (?)", [("Shortbread",), ("Scones",), ("Fudge",)]
        )
        conn.commit()
    return path


def rows(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT id, name FROM recipes ORDER BY id").fetchall()


def test_a_backup_is_a_readable_copy(database: Path, tmp_path: Path) -> None:
    target = backup_sqlite(database, tmp_path / "copy.db")
    assert target == tmp_path / "copy.db"
    assert rows(target) == rows(database) == [(1, "Shortbread"), (2, "Scones"), (3, "Fudge")]


def test_backups_within_one_second_are_numbered(database: Path) -> None:
    now = datetime(2024, 12, 24, 18, 30, 5, tzinfo=timezone.utc)
    first = default_backup_path(database, now=now)
    assert first.name == "bake.backup-20241224T183005Z.db"
    first.touch()
    second = default_backup_path(database, now=now)
    assert second.name == "bake.backup-20241224T183005Z-2.db"
    second.touch()
    assert default_backup_path(database, now=now).name == "bake.backup-20241224T183005Z-3.db"


def test_an_existing_backup_file_is_never_overwritten(database: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious.db"
    target.write_bytes(b"yesterday's backup")
    with pytest.raises(BadInputError) as caught:
        backup_sqlite(database, target)
    assert str(caught.value) == (
        f"backup file {target} already exists; choose another --backup PATH"
    )
    assert target.read_bytes() == b"yesterday's backup"


def test_a_backup_into_a_missing_directory_is_refused(database: Path, tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir" / "copy.db"
    with pytest.raises(BadInputError) as caught:
        backup_sqlite(database, target)
    assert str(caught.value) == (
        f"cannot write backup {target}: directory {target.parent} is missing"
    )
    assert not (tmp_path / "no").exists()


def test_a_source_that_is_not_a_database_leaves_no_backup(tmp_path: Path) -> None:
    source = tmp_path / "recipes.csv"
    source.write_text("name,category\n" + "Shortbread,Cookies\n" * 100)
    target = tmp_path / "copy.db"
    with pytest.raises(BadInputError) as caught:
        backup_sqlite(source, target)
    assert str(caught.value) == (f"cannot back up {source} to {target}: file is not a database")
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipes.csv"]


class _SourceOnAFullDisk:
    """A source connection whose backup writes one page, then hits a full disk."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def backup(self, target: sqlite3.Connection) -> None:
        self.connection.backup(target, pages=1)
        raise sqlite3.OperationalError("database or disk is full")

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The backup module's sqlite3, with a disk that fills up during the copy."""

    def connect(*args: Any, **kwargs: Any) -> Any:
        connection = sqlite3.connect(*args, **kwargs)
        return _SourceOnAFullDisk(connection) if kwargs.get("uri") else connection

    monkeypatch.setattr(
        backup_module, "sqlite3", SimpleNamespace(connect=connect, Error=sqlite3.Error)
    )
    yield


@pytest.mark.usefixtures("full_disk")
def test_a_disk_error_mid_copy_removes_the_partial_backup(database: Path, tmp_path: Path) -> None:
    target = tmp_path / "copy.db"
    with pytest.raises(BadInputError) as caught:
        backup_sqlite(database, target)
    assert str(caught.value) == (f"cannot back up {database} to {target}: database or disk is full")
    assert not target.exists()
    assert rows(database) == [(1, "Shortbread"), (2, "Scones"), (3, "Fudge")]


@pytest.mark.parametrize("name", ["bake#2.db", pytest.param("bake?.db", marks=QUESTION_MARK_NAMES)])
def test_a_path_with_uri_characters_is_backed_up_whole(tmp_path: Path, name: str) -> None:
    database = tmp_path / name
    with closing(sqlite3.connect(database)) as conn:
        conn.execute("CREATE TABLE recipes (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        conn.execute("INSERT INTO recipes (name) VALUES ('Shortbread')")
        conn.commit()
    target = backup_sqlite(database, tmp_path / "copy.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "copy.db"])
    assert rows(target) == [(1, "Shortbread")]
