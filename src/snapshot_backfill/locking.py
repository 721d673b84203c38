"""Keep two migrators from working on one database at the same time.

One lock, one key, for every command that writes (``run``, ``rollback``, ``upgrade-schema``):
a schema upgrade never runs while a backfill or rollback works, nor two of either.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import filelock
from sqlalchemy import text
from sqlalchemy.engine import Engine

from .backup import restrict_mode, sibling_mode
from .database import display_url, sqlite_path
from .errors import BadInputError, LockedError

LOCK_NAME = "snapshot_backfill"
# How long every writing command (run, rollback, upgrade-schema) waits for the lock by default.
DEFAULT_LOCK_TIMEOUT_S = 10.0
# A day: longer waits are a typo, and every backend's timeout takes this many seconds.
MAX_LOCK_TIMEOUT_S = 86400.0
# PostgreSQL advisory locks take a bigint key; derive a stable one from the name.
PG_LOCK_KEY = zlib.crc32(LOCK_NAME.encode())
_POLL_INTERVAL_S = 0.1


def sqlite_lock_path(database: Path) -> Path:
    """The lock file that sits next to a SQLite database while a migrator works on it."""
    return database.with_name(database.name + ".snapshot-backfill.lock")


@contextlib.contextmanager
def migration_lock(engine: Engine, timeout: float) -> Iterator[None]:
    """Hold the migration lock for the block, or raise LockedError after ``timeout`` seconds.

    PostgreSQL: a session advisory lock; MariaDB/MySQL: ``GET_LOCK`` (named per database);
    SQLite: an OS lock on a file next to the database (the kernel drops it if the process
    dies, so a killed migrator never leaves a stale lock). Each batch additionally takes
    SQLite's write lock (``BEGIN IMMEDIATE``) only for as long as the batch lasts, so the
    application is never locked out for the whole run.
    """
    backend = engine.dialect.name
    if backend == "postgresql":
        lock = _postgresql_lock(engine, timeout)
    elif backend in ("mysql", "mariadb"):
        lock = _mysql_lock(engine, timeout)
    else:
        lock = _sqlite_lock(engine, timeout)
    with lock:
        yield


def _locked(engine: Engine, timeout: float) -> LockedError:
    return LockedError(
        f"another snapshot-backfill is working on {display_url(engine.url)} "
        f"(waited {timeout:g}s for its lock); let it finish, or wait longer with --lock-timeout"
    )


@contextlib.contextmanager
def _postgresql_lock(engine: Engine, timeout: float) -> Iterator[None]:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        deadline = time.monotonic() + timeout
        acquire = text("SELECT pg_try_advisory_lock(:key)")
        while not conn.execute(acquire, {"key": PG_LOCK_KEY}).scalar():
            if time.monotonic() >= deadline:
                raise _locked(engine, timeout)
            time.sleep(_POLL_INTERVAL_S)
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_LOCK_KEY})


@contextlib.contextmanager
def _mysql_lock(engine: Engine, timeout: float) -> Iterator[None]:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # GET_LOCK names are server-wide: qualify by database so two databases don't collide.
        name = f"{LOCK_NAME}:{conn.exec_driver_sql('SELECT DATABASE()').scalar()}"
        got = conn.execute(
            text("SELECT GET_LOCK(:name, :timeout)"), {"name": name, "timeout": timeout}
        ).scalar()
        if got != 1:
            raise _locked(engine, timeout)
        try:
            yield
        finally:
            conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})


@contextlib.contextmanager
def _sqlite_lock(engine: Engine, timeout: float) -> Iterator[None]:
    database = sqlite_path(engine.url)
    if database is None:  # an in-memory database belongs to this process alone
        yield
        return
    lock_path = sqlite_lock_path(database)
    # The lock file is no more readable than the database (an older one is tightened).
    mode = sibling_mode(database)
    restrict_mode(lock_path, mode)
    lock = filelock.FileLock(str(lock_path), timeout=timeout, mode=mode)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise _locked(engine, timeout) from None
    except OSError as exc:  # after Timeout, which is an OSError too
        raise BadInputError(
            f"cannot create the lock file {lock_path}: {exc.strerror or exc}; the directory of "
            "the database must be writable"
        ) from None
    try:
        yield
    finally:
        # The file stays: removing it would let a migrator that is waiting on the old inode and
        # one that creates a new file both believe they hold the lock. (On Windows filelock's
        # release removes it all the same.)
        lock.release()
