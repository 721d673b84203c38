"""Open databases: URLs, engines, SQLite connection settings, read-only and write transactions."""

from __future__ import annotations

import contextlib
import nturl2path
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from .errors import BadInputError, DatabaseUnavailableError

ENV_VAR = "SNAPSHOT_BACKFILL_DATABASE_URL"
SQLITE_BUSY_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10

# The short forms people type, mapped to the drivers this project installs (psycopg 3, PyMySQL)
# instead of SQLAlchemy's historical defaults (psycopg2, mysqlclient).
_DEFAULT_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
# Drivers a URL may name that no extra installs: (the package to install, the short scheme).
_OTHER_DRIVERS = {
    "postgresql+psycopg2": ("psycopg2-binary", "postgresql"),
    "postgresql+pg8000": ("pg8000", "postgresql"),
    "postgresql+asyncpg": ("asyncpg", "postgresql"),
    "mysql+mysqldb": ("mysqlclient", "mysql"),
    "mysql+mysqlconnector": ("mysql-connector-python", "mysql"),
    "mariadb+mariadbconnector": ("mariadb", "mariadb"),
}
_EXTRA_FOR_BACKEND = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
_LOCK_ERROR = re.compile(r"database is locked|lock timeout|lock wait timeout", re.IGNORECASE)
# The password runs to the last "@" of the URL: an unencoded "@" in it must not leave its
# tail on show (SQLAlchemy would take that tail for the host; resolve_url refuses such a URL).
_PASSWORD_IN_TEXT = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>\S*)@")


def mask_password(text: str) -> str:
    """Replace the password of every URL written in ``text`` with ``***``."""
    return _PASSWORD_IN_TEXT.sub(lambda m: f"{m.group('head')}***@", text)


def display_url(url: URL) -> str:
    """Render ``url`` for a human: a SQLite file as its path, others never with a password."""
    if is_sqlite(url):
        path = sqlite_path(url)
        return str(path) if path is not None else "sqlite:// (in memory)"
    return url.render_as_string(hide_password=True)


def resolve_url(value: Optional[str], environ: Mapping[str, str] = os.environ) -> URL:
    """Turn ``--database-url`` (or the environment variable) into a URL; a bare path is SQLite."""
    raw = value if value else environ.get(ENV_VAR, "")
    if not raw.strip():
        raise BadInputError(f"no database given: pass --database-url URL or set {ENV_VAR}")
    raw = raw.strip()
    if "://" not in raw:
        return URL.create("sqlite", database=str(Path(raw).expanduser().absolute()))
    try:
        url = sa.make_url(raw)
    except (ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
        raise BadInputError(
            f"invalid database URL: {mask_password(raw)} "
            "(expected e.g. sqlite:///path/to.db, postgresql://user@host/db, mysql://user@host/db)"
        ) from None
    if url.password is not None and any("@" in (part or "") for part in (url.host, url.database)):
        # make_url ends the password at its first "@": the rest would be used as the host (and
        # shown as such). Say so instead of connecting somewhere the user did not mean.
        raise BadInputError(
            f"invalid database URL: {mask_password(raw)}: the password holds an unencoded "
            '"@"; URL-encode the password ("@" is %40, "/" %2F, "#" %23, "%" %25)'
        )
    driver = _DEFAULT_DRIVERS.get(url.drivername)
    if driver:
        url = url.set(drivername=driver)
    return url


def is_sqlite(url_or_engine: URL | Engine | Connection) -> bool:
    """Tell whether the URL, engine or connection is SQLite."""
    if isinstance(url_or_engine, URL):
        return url_or_engine.get_backend_name() == "sqlite"
    return url_or_engine.dialect.name == "sqlite"


def sqlite_path(url: URL) -> Optional[Path]:
    """The file of a SQLite URL, or None for an in-memory database."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    if database.startswith("file:"):
        # A URI: the path ends at "?" or "#", and is percent-decoded (sqlite_uri writes it so).
        database = uri_path(urlsplit(database).path)
    return Path(database)


def uri_path(path: str, windows: bool = os.name == "nt") -> str:
    """The file named by the path part of a ``file:`` URI, percent-decoded.

    On Windows ``/C:/Users/x.db`` (what ``Path.as_uri`` writes) is ``C:\\Users\\x.db``: read as a
    POSIX path it would name no file at all.
    """
    return nturl2path.url2pathname(path) if windows else unquote(path)


def sqlite_uri(path: Path) -> str:
    """A ``file:`` URI for ``path`` that SQLite reads whole ("#" and "?" escaped)."""
    return path.absolute().as_uri()


def open_engine(
    url: URL,
    *,
    create: bool = False,
    busy_timeout: float = SQLITE_BUSY_TIMEOUT_S,
    **engine_kwargs: Any,
) -> Engine:
    """Create an engine for ``url``; a SQLite file must exist unless ``create`` is true.

    ``busy_timeout`` bounds how long a statement waits for a lock another connection holds
    (SQLite's busy timeout, PostgreSQL's ``lock_timeout``, MariaDB's ``lock_wait_timeout``),
    so a locked database is an error, never a hang; servers also get a connect timeout.
    SQLite connections get ``foreign_keys=ON`` and transactions that really begin (``BEGIN``
    is emitted by us, ``BEGIN IMMEDIATE`` for writers), which pysqlite otherwise defers. A
    missing SQLite file is an error, never silently created: a typo in the path would
    otherwise "migrate" an empty new database.
    """
    if is_sqlite(url):
        return _open_sqlite(url, create=create, busy_timeout=busy_timeout, **engine_kwargs)
    connect_args = dict(engine_kwargs.pop("connect_args", {}))
    wait_s = max(1, int(busy_timeout + 0.999))
    if url.get_backend_name() == "postgresql":
        connect_args.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        connect_args.setdefault("options", f"-c lock_timeout={int(busy_timeout * 1000)}")
    elif url.get_backend_name() in ("mysql", "mariadb"):
        connect_args.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        connect_args.setdefault(
            "init_command",
            f"SET SESSION lock_wait_timeout = {wait_s}, innodb_lock_wait_timeout = {wait_s}",
        )
    try:
        return sa.create_engine(url, connect_args=connect_args, **engine_kwargs)
    except (NoSuchModuleError, ImportError, ModuleNotFoundError) as exc:
        extra = _EXTRA_FOR_BACKEND.get(url.get_backend_name())
        other = _OTHER_DRIVERS.get(url.drivername)
        if other is not None:
            # The extras install psycopg 3 and PyMySQL, not the driver this URL names.
            package, short = other
            hint = (
                f"; {url.drivername} needs {package}: pip install {package}, or write "
                f"{short}:// to use the driver the [{extra}] extra installs"
            )
        elif extra:
            hint = f"; install it with: pip install 'snapshot-backfill[{extra}]'"
        else:
            hint = ""
        raise BadInputError(
            f"cannot use {display_url(url)}: database driver not available ({exc}){hint}"
        ) from None


def _open_sqlite(url: URL, *, create: bool, busy_timeout: float, **engine_kwargs: Any) -> Engine:
    path = sqlite_path(url)
    if path is not None:
        if path.is_dir():
            raise DatabaseUnavailableError(f"{path} is a directory, not a SQLite database file")
        if not create and not path.exists():
            hint = ""
            if not path.is_absolute():
                # sqlite:///tmp/x.db is the relative path tmp/x.db: a classic slip.
                absolute = "/" + path.as_posix()
                hint = (
                    f"; {path} is relative to the current directory: for {absolute} write "
                    f"sqlite:///{absolute} (four slashes) or the bare path {absolute}"
                )
            raise DatabaseUnavailableError(
                f"no SQLite database at {path}: the file does not exist (check the path; "
                f"this command never creates a database){hint}"
            )
        # mode=rw makes SQLite itself refuse to create the file, even if it vanishes meanwhile.
        mode = "rwc" if create else "rw"
        url = URL.create("sqlite", database=sqlite_uri(path), query={"mode": mode, "uri": "true"})
    engine = sa.create_engine(url, **engine_kwargs)
    _install_sqlite_hooks(engine, busy_timeout)
    return engine


def _install_sqlite_hooks(engine: Engine, busy_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Leave transaction control to us: pysqlite's own BEGIN handling defers and skips.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def check_connection(engine: Engine) -> None:
    """Connect once and read the catalog, turning every failure into one clear message."""
    try:
        with engine.connect() as conn:
            if is_sqlite(conn):
                conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()
            else:
                conn.exec_driver_sql("SELECT 1").scalar()
    except DBAPIError as exc:
        raise DatabaseUnavailableError(
            f"cannot open {display_url(engine.url)}: {describe_db_error(exc)}"
        ) from None


def require_writable(engine: Engine) -> None:
    """Refuse, before anything is written, a SQLite file (or its directory) we cannot write."""
    if not is_sqlite(engine):
        return
    path = sqlite_path(engine.url)
    if path is None:
        return
    if not os.access(path, os.W_OK):
        raise DatabaseUnavailableError(f"{path} is read-only: nothing can be written to it")
    if not os.access(path.parent, os.W_OK):
        raise DatabaseUnavailableError(
            f"{path.parent} is read-only: SQLite needs to write its journal beside {path.name}"
        )


def describe_db_error(exc: BaseException) -> str:
    """The first line of a driver error, password-masked, without SQLAlchemy's boilerplate."""
    orig = getattr(exc, "orig", None) or exc
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    if len(args) == 2 and isinstance(args[0], int):  # PyMySQL: (errno, message)
        text = str(args[1])
    else:
        text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    if isinstance(orig, sqlite3.DatabaseError) and "not a database" in text:
        text = "the file is not a SQLite database"
    elif _LOCK_ERROR.search(text):
        text = f"the database is locked by another connection ({text})"
    return mask_password(text)


@contextlib.contextmanager
def read_only(engine: Engine) -> Iterator[Connection]:
    """Yield a connection in a transaction the database itself keeps read-only, then roll back.

    SQLite: ``PRAGMA query_only``; PostgreSQL: ``SET TRANSACTION READ ONLY`` at repeatable read
    (one consistent snapshot for every query of a plan); MariaDB/MySQL: ``START TRANSACTION
    READ ONLY`` with a consistent snapshot.
    """
    with engine.connect() as conn:
        backend = conn.dialect.name
        try:
            if backend == "sqlite":
                conn.exec_driver_sql("PRAGMA query_only = ON")
            elif backend == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            elif backend in ("mysql", "mariadb"):
                conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            else:  # pragma: no cover - only the three supported backends reach here
                raise BadInputError(f"unsupported database backend: {backend}")
            yield conn
        finally:
            conn.rollback()
            if backend == "sqlite":
                conn.exec_driver_sql("PRAGMA query_only = OFF")
                conn.rollback()


@contextlib.contextmanager
def write_transaction(conn: Connection) -> Iterator[Connection]:
    """Run a block in one committed transaction; SQLite takes its write lock up front."""
    if not is_sqlite(conn):
        with conn.begin():
            yield conn
        return
    conn.execution_options(sqlite_begin="IMMEDIATE")
    try:
        with conn.begin():
            yield conn
    finally:
        conn.execution_options(sqlite_begin="DEFERRED")


def refresh_statistics(engine: Engine, table: str, columns: Sequence[str]) -> None:
    """Refresh the server's planner statistics of ``table`` after a bulk write.

    A run or rollback changes most rows of a table in minutes, long before autovacuum or
    InnoDB's background statistics catch up, and with the old figures PostgreSQL plans the
    next plan's joins as if every run were still unlinked (a no-op run at 1M runs: 1.27 s for
    one query instead of 0.39 s). PostgreSQL analyzes only ``columns`` (0.33 s at 1M runs,
    where the whole of recipe_snapshots would take 4.5 s); MariaDB's ANALYZE TABLE samples a
    few pages per index. Neither blocks a reader or writer. SQLite is left alone: the
    application never runs ANALYZE, and a ``sqlite_stat1`` table would change how its own
    queries are planned. Lacking the privilege is not an error: the statistics stay as they
    were.
    """
    backend = engine.dialect.name
    if backend == "sqlite":
        return
    quote = engine.dialect.identifier_preparer.quote
    if backend == "postgresql":
        statement = f"ANALYZE {quote(table)} ({', '.join(quote(c) for c in columns)})"
    else:
        statement = f"ANALYZE TABLE {quote(table)}"
    with contextlib.suppress(DBAPIError), engine.connect() as conn:
        result = conn.exec_driver_sql(statement)
        if result.returns_rows:
            result.all()  # MariaDB answers with a status row
        conn.commit()


class ForeignKeysError(RuntimeError):
    """Foreign-key enforcement could not be switched off (or back on); ``str`` says why."""


@contextlib.contextmanager
def foreign_keys_off(conn: Connection) -> Iterator[Connection]:
    """Within the block, ``conn`` does not enforce foreign keys; they are back on after it.

    How production lost rows (a recipe deleted under its runs) and how a table is rebuilt:
    SQLite ``PRAGMA foreign_keys = OFF``, set on the driver's connection and only outside a
    transaction (SQLite ignores it inside one, so that is refused: begin the transaction in the
    block); PostgreSQL ``session_replication_role = replica`` (foreign keys are triggers there;
    needs a superuser); MariaDB ``FOREIGN_KEY_CHECKS = 0``. On the servers the setting may be
    made inside the caller's transaction. A connection whose setting cannot be restored is
    invalidated, so that the pool never hands it out again with the checks off.
    """
    backend = conn.dialect.name
    raw: Any = conn.connection.driver_connection
    if backend == "sqlite":
        if raw.in_transaction:
            raise ForeignKeysError("cannot switch SQLite foreign keys inside a transaction")
        _sqlite_foreign_keys(raw, False)
    else:
        try:
            _server_setting(conn, _SERVER_FOREIGN_KEYS[backend][0])
        except DBAPIError as exc:
            raise ForeignKeysError(describe_db_error(exc)) from exc
    try:
        yield conn
    finally:
        try:
            if backend == "sqlite":
                _sqlite_foreign_keys(raw, True)
            else:
                _server_setting(conn, _SERVER_FOREIGN_KEYS[backend][1])
        except (DBAPIError, sqlite3.Error, ForeignKeysError):
            conn.invalidate()


def _server_setting(conn: Connection, statement: str) -> None:
    """Set a session variable: in the caller's transaction, else committed at once."""
    transaction = conn.get_transaction()
    if transaction is None:
        conn.exec_driver_sql(statement)
        conn.commit()  # ends the transaction the statement began; the session keeps the value
    elif transaction.is_valid:
        conn.exec_driver_sql(statement)
    else:  # an aborted transaction cannot run it: the pool must not reuse this connection
        conn.invalidate()


@contextlib.contextmanager
def transaction_without_foreign_keys(engine: Engine) -> Iterator[Connection]:
    """A connection of its own, foreign keys off, in one transaction committed at the end."""
    with engine.connect() as conn, foreign_keys_off(conn), write_transaction(conn):
        yield conn


# (off, back on) per server backend; MySQL's dialect name is "mysql", MariaDB's "mariadb".
_SERVER_FOREIGN_KEYS = {
    "postgresql": (
        "SET session_replication_role = replica",
        "SET session_replication_role = DEFAULT",
    ),
    "mysql": ("SET FOREIGN_KEY_CHECKS = 0", "SET FOREIGN_KEY_CHECKS = 1"),
    "mariadb": ("SET FOREIGN_KEY_CHECKS = 0", "SET FOREIGN_KEY_CHECKS = 1"),
}


def _sqlite_foreign_keys(raw: sqlite3.Connection, enabled: bool) -> None:
    cursor = raw.cursor()
    try:
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if enabled else 'OFF'}")
        state = cursor.execute("PRAGMA foreign_keys").fetchone()
    finally:
        cursor.close()
    if not state or bool(state[0]) != enabled:
        raise ForeignKeysError(f"SQLite did not switch foreign keys {'on' if enabled else 'off'}")
