"""A scratch copy of what the backfill touches, made without writing the source, and removed.

``scratch_copy(source_engine)`` yields a ``Scratch``: a database that holds a copy of the
source's tables the backfill reads and writes (and the tables their foreign keys refer to),
with their columns, keys, checks, indexes and triggers. The copy is removed when the block
ends, also on Ctrl-C or an error:

- SQLite: SQLite's online backup API, from a read-only connection (``mode=ro``), into a new
  file in the temporary directory (``$TMPDIR``) named ``snapshot-backfill-scratch-*.sqlite``.
  Triggers, indexes and checks come along with the pages.
- PostgreSQL and MariaDB: the tables are created from the source's own definitions
  (PostgreSQL: reflected, with ``pg_get_triggerdef``/``pg_get_functiondef`` for the triggers;
  MariaDB: ``SHOW CREATE TABLE`` and ``SHOW CREATE TRIGGER``) and the rows streamed in chunks,
  all read in one read-only transaction (``database.read_only``, as ``plan`` reads). The copy
  goes into the empty database ``scratch_url`` names, or else into a new database
  ``snapshot_backfill_scratch_*`` created on the source's server and dropped at the end.
  Triggers are created after the rows are copied, so they act on what the backfill writes only.

A process killed with SIGKILL cannot clean up: every scratch it makes is named after the host
and the process, and holds a marker table (``snapshot_backfill_scratch``, servers), so that
``clean_leftovers`` (called by every rehearsal before it copies) removes the scratch of a
process of this host that no longer exists, and names it.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import socket
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from ..database import (
    check_connection,
    display_url,
    is_sqlite,
    open_engine,
    read_only,
    sqlite_path,
    sqlite_uri,
)
from ..errors import BadInputError
from ..journal import JOURNAL_TABLE_NAME
from ..models import ingredients, production_runs, recipe_ingredients, recipe_snapshots, recipes
from .scratch_servers import copy_mariadb, copy_postgresql

# What the backfill reads and writes; the tables their foreign keys refer to come along.
BACKFILL_TABLES = (
    recipes.name,
    ingredients.name,
    recipe_ingredients.name,
    production_runs.name,
    recipe_snapshots.name,
)
MARKER_TABLE = "snapshot_backfill_scratch"
SCRATCH_PREFIX = "snapshot_backfill_scratch"
SQLITE_PREFIX = "snapshot-backfill-scratch"
SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm", ".snapshot-backfill.lock")
CHUNK_ROWS = 2000
# SQLite pages copied per backup step: between steps the source is unlocked, so the
# application's writers wait no longer than for a plain read (a write restarts the copy).
BACKUP_PAGES_PER_STEP = 1024


@dataclass
class Leftover:
    """A scratch left by a rehearsal that was killed, and what was done with it."""

    name: str
    removed: bool
    reason: str


@dataclass
class Scratch:
    """The scratch copy: where it is and what it holds."""

    url: URL
    kind: str  # "file" (SQLite), "created" (a new database), "given" (--scratch-url)
    name: str
    tables: list[str] = field(default_factory=list)
    rows_copied: int = 0
    triggers: list[str] = field(default_factory=list)
    copy_s: float = 0.0

    @property
    def display(self) -> str:
        return display_url(self.url)


def host_tag() -> str:
    """Six hex digits naming this host in scratch names (a hostname may not fit a name)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _pid_alive(pid: int) -> bool:
    """Tell whether process ``pid`` of this host still runs (when it cannot tell: yes)."""
    if pid == os.getpid():
        return True
    if sys.platform == "win32":  # pragma: no cover - Windows
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or cannot tell: assume alive)
    return True


if sys.platform == "win32":  # pragma: no cover - Windows
    import ctypes
    from ctypes import wintypes

    _PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
    _STILL_ACTIVE = 259
    _ERROR_INVALID_PARAMETER = 87  # what OpenProcess says of a pid that no process has
    _kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    _kernel32.OpenProcess.restype = wintypes.HANDLE
    _kernel32.GetExitCodeProcess.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD))
    _kernel32.GetExitCodeProcess.restype = wintypes.BOOL
    _kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
    _kernel32.CloseHandle.restype = wintypes.BOOL

    def _windows_pid_alive(pid: int) -> bool:
        """Tell whether process ``pid`` runs, without ``os.kill(pid, 0)``.

        On Windows ``os.kill`` with a signal number is TerminateProcess: it would end the
        process it asks about. The process is opened for a query instead, and its exit code
        read (STILL_ACTIVE while it runs).
        """
        handle = _kernel32.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
        if not handle:
            # Access denied: it exists, owned by someone else (or cannot tell: assume alive).
            return ctypes.get_last_error() != _ERROR_INVALID_PARAMETER
        try:
            code = wintypes.DWORD()
            if not _kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
                return True  # cannot tell: assume alive
            # One that exited with code 259 reads as running: its scratch is left alone.
            return code.value == _STILL_ACTIVE
        finally:
            _kernel32.CloseHandle(handle)


def _new_name(separator: str, prefix: str) -> str:
    return separator.join((prefix, host_tag(), str(os.getpid()), uuid.uuid4().hex[:8]))


def _owner(name: str, separator: str, prefix: str) -> Optional[tuple[str, int]]:
    """The (host tag, pid) a scratch name carries, or None if it is not one of ours."""
    match = re.fullmatch(
        re.escape(prefix + separator) + rf"([0-9a-f]{{6}}){separator}(\d+){separator}[0-9a-f]{{8}}",
        name,
    )
    return (match.group(1), int(match.group(2))) if match else None


def _is_dead_here(owner: Optional[tuple[str, int]]) -> Optional[str]:
    """Why a scratch may be removed (its process of this host is gone), or None."""
    if owner is None:
        return None
    tag, pid = owner
    if tag != host_tag():
        return None
    if _pid_alive(pid):
        return None
    return f"left by process {pid}, which no longer exists"


# --- reading the source -----------------------------------------------------------------------


def sqlite_read_uri(path: Path) -> Optional[str]:
    """A URI that reads ``path`` without writing it, or its -wal/-shm; None: open it normally.

    A read-only connection (``mode=ro``) writes nothing to the file. In WAL mode, a reader
    still records its read mark in the shared-memory index (``-shm``), so while another
    connection has it open (the file exists) the index is opened read-only too
    (``readonly_shm``: SQLite then reads the WAL itself). A WAL database nobody has open has
    no -shm: a read-only connection would create -wal and -shm and could not remove them, so
    it is opened as ``plan`` opens it, which removes them again, leaving the bytes as they were.
    """
    with open(path, "rb") as handle:
        header = handle.read(20)
    wal_mode = len(header) == 20 and header[18] == 2
    shm = Path(str(path) + "-shm")
    if wal_mode and not shm.exists():
        return None
    return f"{sqlite_uri(path)}?mode=ro" + ("&readonly_shm=1" if wal_mode else "")


def open_source(url: URL, *, busy_timeout: float) -> Engine:
    """An engine that reads the source, checked reachable (SQLite: read-only, see above)."""
    engine = open_engine(url, busy_timeout=busy_timeout)
    path = sqlite_path(url) if is_sqlite(url) else None
    uri = sqlite_read_uri(path) if path is not None else None
    if uri is not None:
        engine.dispose()

        def connect() -> sqlite3.Connection:
            connection = sqlite3.connect(
                uri, uri=True, timeout=busy_timeout, check_same_thread=False
            )
            connection.isolation_level = None
            return connection

        engine = sa.create_engine(
            URL.create("sqlite", database=uri, query={"uri": "true"}),
            creator=connect,
            poolclass=sa.pool.NullPool,
        )
    try:
        check_connection(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


# --- leftovers ------------------------------------------------------------------------------


def clean_leftovers(source: Engine, scratch_url: Optional[URL] = None) -> list[Leftover]:
    """Remove the scratch copies that killed rehearsals of this host left; name each.

    A scratch whose process still runs (a rehearsal in progress) or that another host made
    is left alone and listed with ``removed`` false.
    """
    if is_sqlite(source):
        return _clean_sqlite_leftovers()
    found: list[Leftover] = []
    if scratch_url is not None:
        found.extend(_clean_given(scratch_url))
    found.extend(_clean_created(source))
    return found


def _clean_sqlite_leftovers() -> list[Leftover]:
    found = []
    pattern = os.path.join(tempfile.gettempdir(), f"{SQLITE_PREFIX}-*.sqlite")
    for path in sorted(glob.glob(pattern)):
        stem = Path(path).name[: -len(".sqlite")]
        reason = _is_dead_here(_owner(stem, "-", SQLITE_PREFIX))
        if reason is None:
            found.append(Leftover(path, False, "in use or not made on this host: left alone"))
            continue
        _remove_sqlite_file(Path(path))
        found.append(Leftover(path, True, reason))
    return found


def _remove_sqlite_file(path: Path) -> None:
    for candidate in (path, *(Path(str(path) + side) for side in SQLITE_SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()


def _admin(source: Engine) -> Engine:
    """An engine on the source's server, for CREATE/DROP DATABASE and the catalog only."""
    return open_engine(source.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def _list_scratch_databases(admin: Connection) -> list[str]:
    like = SCRATCH_PREFIX.replace("_", r"\_") + r"\_%"
    if admin.dialect.name == "postgresql":
        query = "SELECT datname FROM pg_database WHERE datname LIKE :like ORDER BY datname"
    else:
        query = (
            "SELECT schema_name FROM information_schema.schemata "
            "WHERE schema_name LIKE :like ORDER BY schema_name"
        )
    return [r[0] for r in admin.execute(sa.text(query), {"like": like})]


def _clean_created(source: Engine) -> list[Leftover]:
    found = []
    admin = _admin(source)
    try:
        with admin.connect() as conn:
            for name in _list_scratch_databases(conn):
                reason = _is_dead_here(_owner(name, "_", SCRATCH_PREFIX))
                if reason is None:
                    found.append(
                        Leftover(name, False, "in use or not made on this host: left alone")
                    )
                    continue
                _drop_database(conn, name)
                found.append(Leftover(name, True, reason))
    finally:
        admin.dispose()
    return found


def _drop_database(admin: Connection, name: str) -> None:
    quoted = admin.dialect.identifier_preparer.quote(name)
    if admin.dialect.name == "postgresql":
        # A killed child's backend may still be winding down: FORCE ends it (PostgreSQL 13+).
        version = admin.dialect.server_version_info or (0,)
        force = " WITH (FORCE)" if version >= (13,) else ""
        admin.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}{force}")
    else:
        admin.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}")


def _read_marker(conn: Connection) -> Optional[dict[str, list[str]]]:
    if not sa.inspect(conn).has_table(MARKER_TABLE):
        return None
    marker: dict[str, list[str]] = {}
    for key, value in conn.exec_driver_sql(f"SELECT k, v FROM {MARKER_TABLE} ORDER BY id"):
        marker.setdefault(key, []).append(value)
    return marker


def _clean_given(scratch_url: URL) -> list[Leftover]:
    engine = open_engine(scratch_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            marker = _read_marker(conn)
            conn.rollback()
            if marker is None:
                return []
            pid = int(marker.get("pid", ["0"])[0])
            owner = (marker.get("host", [""])[0], pid)
            reason = _is_dead_here(owner)
            name = display_url(scratch_url)
            if reason is None:
                return [Leftover(name, False, "in use or not made on this host: left alone")]
            _empty_given(conn, marker)
            return [Leftover(name, True, reason)]
    finally:
        engine.dispose()


def _empty_given(conn: Connection, marker: dict[str, list[str]]) -> None:
    """Drop what a rehearsal created in a --scratch-url database, marker last."""
    quote = conn.dialect.identifier_preparer.quote
    present = set(sa.inspect(conn).get_table_names())
    conn.rollback()
    tables = [t for t in [*marker.get("table", []), JOURNAL_TABLE_NAME] if t in present]
    with conn.begin():
        if conn.dialect.name == "postgresql":
            if tables:
                conn.exec_driver_sql(f"DROP TABLE {', '.join(quote(t) for t in tables)} CASCADE")
            for function in marker.get("function", []):
                conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {function} CASCADE")
            for type_name in marker.get("type", []):
                conn.exec_driver_sql(f"DROP TYPE IF EXISTS {quote(type_name)} CASCADE")
        else:
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
            for table in tables:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {quote(table)}")
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")
    with conn.begin():
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {MARKER_TABLE}")


# --- the copy -------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_copy(
    source: Engine, *, scratch_url: Optional[URL] = None, chunk_rows: int = CHUNK_ROWS
) -> Iterator[Scratch]:
    """Copy what the backfill touches into a scratch database; remove it when the block ends."""
    if is_sqlite(source):
        if scratch_url is not None:
            raise BadInputError(
                "--scratch-url is for PostgreSQL and MariaDB: a SQLite database is copied into "
                "a temporary file (set TMPDIR to choose its directory)"
            )
        with _sqlite_scratch(source) as scratch:
            yield scratch
        return
    if scratch_url is not None:
        if scratch_url.get_backend_name() != source.url.get_backend_name():
            raise BadInputError(
                f"--scratch-url {display_url(scratch_url)} is not on the source's kind of "
                f"database ({source.url.get_backend_name()})"
            )
        with _given_scratch(source, scratch_url, chunk_rows) as scratch:
            yield scratch
        return
    with _created_scratch(source, chunk_rows) as scratch:
        yield scratch


@contextlib.contextmanager
def _sqlite_scratch(source: Engine) -> Iterator[Scratch]:
    source_path = sqlite_path(source.url)
    if source_path is None:
        raise BadInputError("an in-memory SQLite database cannot be rehearsed: give a file")
    name = _new_name("-", SQLITE_PREFIX)
    target = Path(tempfile.gettempdir()) / f"{name}.sqlite"
    started = time.monotonic()
    try:
        # Read-only at the file level: this connection cannot write the source, whatever runs.
        uri = sqlite_read_uri(source_path)
        reader = sqlite3.connect(uri, uri=True) if uri else sqlite3.connect(str(source_path))
        try:
            writer = sqlite3.connect(str(target))
            try:
                reader.backup(writer, pages=BACKUP_PAGES_PER_STEP)
            finally:
                writer.close()
        finally:
            reader.close()
        url = URL.create("sqlite", database=str(target))
        scratch = Scratch(url=url, kind="file", name=str(target))
        engine = open_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                scratch.tables = sorted(sa.inspect(conn).get_table_names())
                scratch.triggers = [
                    r[0]
                    for r in conn.exec_driver_sql(
                        "SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name"
                    )
                ]
                scratch.rows_copied = sum(
                    int(conn.exec_driver_sql(f'SELECT count(*) FROM "{t}"').scalar_one())
                    for t in scratch.tables
                )
        finally:
            engine.dispose()
        scratch.copy_s = time.monotonic() - started
        yield scratch
    finally:
        _remove_sqlite_file(target)


@contextlib.contextmanager
def _created_scratch(source: Engine, chunk_rows: int) -> Iterator[Scratch]:
    name = _new_name("_", SCRATCH_PREFIX)
    admin = _admin(source)
    # May exist from the moment CREATE is sent: a Ctrl-C that lands while it runs, or while
    # its connection closes, must still drop it. A CREATE the server refused leaves nothing.
    may_exist = True
    try:
        try:
            with admin.connect() as conn:
                quoted = conn.dialect.identifier_preparer.quote(name)
                conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
        except Exception:
            may_exist = False
            raise
        url = source.url.set(database=name)
        scratch = Scratch(url=url, kind="created", name=name)
        yield from _filled(source, scratch, chunk_rows)
    finally:
        try:
            if may_exist:
                with admin.connect() as conn:
                    _drop_database(conn, name)
        finally:
            admin.dispose()


@contextlib.contextmanager
def _given_scratch(source: Engine, scratch_url: URL, chunk_rows: int) -> Iterator[Scratch]:
    engine = open_engine(scratch_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
            conn.rollback()
        if tables:
            raise BadInputError(
                f"--scratch-url {display_url(scratch_url)} is not empty (it has tables: "
                f"{', '.join(sorted(tables)[:5])}{', ...' if len(tables) > 5 else ''}): give "
                "an empty database, which the rehearsal writes and empties again"
            )
    finally:
        engine.dispose()
    scratch = Scratch(url=scratch_url, kind="given", name=display_url(scratch_url))
    try:
        yield from _filled(source, scratch, chunk_rows)
    finally:
        engine = open_engine(scratch_url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                marker = _read_marker(conn)
                conn.rollback()
                if marker is not None:
                    _empty_given(conn, marker)
        finally:
            engine.dispose()


def _filled(source: Engine, scratch: Scratch, chunk_rows: int) -> Iterator[Scratch]:
    started = time.monotonic()
    target = open_engine(scratch.url, poolclass=sa.pool.NullPool)
    try:
        with target.connect() as conn, conn.begin():
            # The marker is created with its owner in one statement: MariaDB commits DDL at
            # once, and a marker without an owner (a kill in between) could not be cleaned.
            create = (
                f"CREATE TABLE {MARKER_TABLE} (id INTEGER NOT NULL PRIMARY KEY, "
                "k VARCHAR(20) NOT NULL, v VARCHAR(500) NOT NULL)"
            )
            owner = (
                f"SELECT 1 AS id, 'host' AS k, '{host_tag()}' AS v "
                f"UNION ALL SELECT 2, 'pid', '{os.getpid()}'"
            )
            if conn.dialect.name == "postgresql":  # DDL is transactional: one transaction
                conn.exec_driver_sql(create)
                conn.exec_driver_sql(f"INSERT INTO {MARKER_TABLE} (id, k, v) {owner}")
            else:
                conn.exec_driver_sql(f"{create} {owner}")
        with read_only(source) as reader:
            present = set(sa.inspect(reader).get_table_names())
            wanted = [t for t in (*BACKFILL_TABLES, JOURNAL_TABLE_NAME) if t in present]
            copy = copy_postgresql if reader.dialect.name == "postgresql" else copy_mariadb
            copy(reader, target, scratch, wanted, chunk_rows=chunk_rows, mark=_mark)
    finally:
        target.dispose()
    scratch.copy_s = time.monotonic() - started
    yield scratch


def _mark(conn: Connection, items: Sequence[tuple[str, Any]]) -> None:
    """Record in the marker what the copy created (so a later rehearsal can remove it)."""
    start = int(conn.exec_driver_sql(f"SELECT count(*) FROM {MARKER_TABLE}").scalar_one())
    for offset, (key, value) in enumerate(items, start=start + 1):
        conn.execute(
            sa.text(f"INSERT INTO {MARKER_TABLE} (id, k, v) VALUES (:id, :k, :v)"),
            {"id": offset, "k": key, "v": str(value)},
        )
