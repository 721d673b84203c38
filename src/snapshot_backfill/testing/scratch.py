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
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or cannot tell: assume alive)
    return True


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
        force = " WITH (FORCE)" if admin.dialect.server_version_info >= (13,) else ""
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
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {conn.dialect.identifier_preparer.quote(name)}")
        try:
            url = source.url.set(database=name)
            scratch = Scratch(url=url, kind="created", name=name)
            yield from _filled(source, scratch, chunk_rows)
        finally:
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
            conn.exec_driver_sql(
                f"CREATE TABLE {MARKER_TABLE} (id INTEGER NOT NULL PRIMARY KEY, "
                "k VARCHAR(20) NOT NULL, v VARCHAR(500) NOT NULL)"
            )
            _mark(conn, [("host", host_tag()), ("pid", str(os.getpid()))])
        with read_only(source) as reader:
            if reader.dialect.name == "postgresql":
                _copy_postgresql(reader, target, scratch, chunk_rows)
            else:
                _copy_mariadb(reader, target, scratch, chunk_rows)
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


def stream_table(
    reader: Connection, table: str, columns: Sequence[str], chunk_rows: int
) -> Iterator[list[tuple[Any, ...]]]:
    """Yield a table's rows in chunks, through a server-side cursor (memory flat)."""
    quote = reader.dialect.identifier_preparer.quote
    result = reader.execution_options(yield_per=chunk_rows).exec_driver_sql(
        f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(table)}"
    )
    try:
        for partition in result.partitions(chunk_rows):
            yield [tuple(row) for row in partition]
    finally:
        result.close()


def _insertable(reader: Connection, table: str) -> list[str]:
    """The columns a copy writes: all but generated ones (the server computes those)."""
    return [c["name"] for c in sa.inspect(reader).get_columns(table) if not c.get("computed")]


def _copy_rows(reader: Connection, writer: Connection, table: str, chunk_rows: int) -> int:
    columns = _insertable(reader, table)
    statement = sa.table(table, *(sa.column(c) for c in columns)).insert()
    copied = 0
    for chunk in stream_table(reader, table, columns, chunk_rows):
        writer.execute(statement, [dict(zip(columns, row)) for row in chunk])
        writer.commit()
        copied += len(chunk)
    return copied


def _wanted(reader: Connection) -> list[str]:
    present = set(sa.inspect(reader).get_table_names())
    return [t for t in (*BACKFILL_TABLES, JOURNAL_TABLE_NAME) if t in present]


# --- PostgreSQL -----------------------------------------------------------------------------

_PG_TRIGGERS = """
SELECT c.relname AS table_name, t.tgname AS name, pg_get_triggerdef(t.oid) AS definition,
       t.tgenabled AS enabled, p.oid AS function_oid, pn.nspname AS function_schema,
       p.oid::regprocedure::text AS function_signature
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_proc p ON p.oid = t.tgfoid
JOIN pg_namespace pn ON pn.oid = p.pronamespace
WHERE NOT t.tgisinternal AND n.nspname = current_schema() AND c.relname = ANY(:tables)
ORDER BY c.relname, t.tgname
"""


def _copy_postgresql(reader: Connection, target: Engine, scratch: Scratch, chunk_rows: int) -> None:
    metadata = sa.MetaData()
    # resolve_fks: the tables the foreign keys refer to are reflected (and copied) too.
    metadata.reflect(bind=reader, only=_wanted(reader), resolve_fks=True)
    tables = [t for t in metadata.tables.values() if t.schema is None]
    scratch.tables = sorted(t.name for t in tables)
    serials: list[tuple[str, str]] = []
    with target.connect() as writer:
        with writer.begin():
            _mark(writer, [("table", t.name) for t in tables])
        for table in tables:
            for column in table.columns:
                default = column.server_default
                if default is not None and "nextval(" in str(getattr(default, "arg", "")):
                    # The source's sequence is not ours: SERIAL makes the copy's own, and its
                    # position is set from the source's once the rows are in.
                    column.server_default = None
                    serials.append((table.name, column.name))
                elif column.identity is not None:
                    serials.append((table.name, column.name))
                if isinstance(column.type, sa.Enum) and column.type.name:
                    with writer.begin():
                        _mark(writer, [("type", column.type.name)])
                    column.type.create(writer, checkfirst=True)  # type: ignore[attr-defined]
                    writer.commit()
            with writer.begin():
                # Keys are added after the rows, NOT VALID: the source's rows are copied as they
                # are (a run whose recipe was deleted with the keys off stays an orphan).
                writer.execute(sa.schema.CreateTable(table, include_foreign_key_constraints=[]))
        for table in tables:
            scratch.rows_copied += _copy_rows(reader, writer, table.name, chunk_rows)
        with writer.begin():
            for table in tables:
                for index in table.indexes:
                    writer.execute(sa.schema.CreateIndex(index))
                for key in table.foreign_key_constraints:
                    ddl = sa.schema.AddConstraint(key).compile(dialect=writer.dialect)
                    writer.exec_driver_sql(f"{ddl} NOT VALID")
            for table_name, column_name in serials:
                sequence = reader.execute(
                    sa.text("SELECT pg_get_serial_sequence(:t, :c)"),
                    {"t": table_name, "c": column_name},
                ).scalar()
                if sequence is None:
                    continue
                last, called = reader.exec_driver_sql(
                    f"SELECT last_value, is_called FROM {sequence}"
                ).one()
                writer.execute(
                    sa.text("SELECT setval(pg_get_serial_sequence(:t, :c), :v, :called)"),
                    {"t": table_name, "c": column_name, "v": last, "called": called},
                )
        triggers = reader.execute(sa.text(_PG_TRIGGERS), {"tables": scratch.tables}).all()
        functions: dict[int, str] = {}
        for trigger in triggers:
            if trigger.function_schema not in ("pg_catalog", "information_schema"):
                functions.setdefault(trigger.function_oid, trigger.function_signature)
        with writer.begin():
            _mark(writer, [("function", signature) for signature in functions.values()])
            for oid in functions:
                definition = reader.execute(
                    sa.text("SELECT pg_get_functiondef(:oid)"), {"oid": oid}
                ).scalar_one()
                writer.exec_driver_sql(definition)
            for trigger in triggers:
                writer.exec_driver_sql(trigger.definition)
                if trigger.enabled == "D":
                    quote = writer.dialect.identifier_preparer.quote
                    writer.exec_driver_sql(
                        f"ALTER TABLE {quote(trigger.table_name)} DISABLE TRIGGER "
                        f"{quote(trigger.name)}"
                    )
                scratch.triggers.append(f"{trigger.table_name}.{trigger.name}")


# --- MariaDB / MySQL ------------------------------------------------------------------------

_DEFINER = re.compile(r"\bDEFINER\s*=\s*(`[^`]*`|'[^']*'|[^@\s]+)@(`[^`]*`|'[^']*'|\S+)\s+", re.I)


def _closure(reader: Connection, start: Sequence[str]) -> list[str]:
    """``start`` and every table their foreign keys refer to, transitively (same database)."""
    inspector = sa.inspect(reader)
    seen: list[str] = []
    todo = list(start)
    while todo:
        table = todo.pop(0)
        if table in seen:
            continue
        seen.append(table)
        for key in inspector.get_foreign_keys(table):
            if key.get("referred_schema") in (None, reader.engine.url.database):
                todo.append(key["referred_table"])
    return seen


def _copy_mariadb(reader: Connection, target: Engine, scratch: Scratch, chunk_rows: int) -> None:
    tables = _closure(reader, _wanted(reader))
    scratch.tables = sorted(tables)
    quote = reader.dialect.identifier_preparer.quote
    definitions = [reader.exec_driver_sql(f"SHOW CREATE TABLE {quote(t)}").one()[1] for t in tables]
    trigger_names = list(
        reader.execute(
            sa.text(
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
                "WHERE EVENT_OBJECT_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE IN :tables "
                "ORDER BY EVENT_OBJECT_TABLE, EVENT_MANIPULATION, ACTION_TIMING, ACTION_ORDER"
            ).bindparams(sa.bindparam("tables", expanding=True)),
            {"tables": tables},
        ).scalars()
    )
    triggers = [
        reader.exec_driver_sql(f"SHOW CREATE TRIGGER {quote(name)}").one()._mapping
        for name in trigger_names
    ]
    with target.connect() as writer:
        with writer.begin():
            _mark(writer, [("table", t) for t in tables])
        # The rows are copied as they are: a run whose recipe was deleted with the keys off
        # stays an orphan in the copy (the keys are not checked when they come back on).
        writer.exec_driver_sql("SET SESSION FOREIGN_KEY_CHECKS = 0")
        writer.exec_driver_sql(
            "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_AUTO_VALUE_ON_ZERO')"
        )
        for definition in definitions:
            writer.exec_driver_sql(definition)
        for table in tables:
            scratch.rows_copied += _copy_rows(reader, writer, table, chunk_rows)
        for trigger in triggers:
            # Defined by the rehearsal's user: another definer would need SUPER/SET USER.
            writer.exec_driver_sql("SET SESSION sql_mode = %s", (trigger["sql_mode"],))
            writer.exec_driver_sql(_DEFINER.sub("", trigger["SQL Original Statement"], count=1))
            scratch.triggers.append(str(trigger["Trigger"]))
        writer.exec_driver_sql("SET SESSION FOREIGN_KEY_CHECKS = 1")
        writer.commit()
