"""Database backends for the tests: which servers are configured, and a fresh database per test.

No pytest in here: the project's ``tests/conftest.py`` wraps these in fixtures, and a
script can use them directly::

    from snapshot_backfill.testing.backends import discover, provision

    for kind, server_url in discover().items():
        with provision(kind, server_url, Path("/tmp/x")) as backend:
            engine = backend.make_engine()   # disposed when the block ends
            ...
    wait_for_drops()   # server databases are dropped in the background (also at exit)

Servers are configured by URL (``--postgresql-url``/``--mariadb-url`` win over the environment):

- ``SNAPSHOT_BACKFILL_TEST_POSTGRESQL_URL``, e.g. ``postgresql+psycopg://postgres@127.0.0.1/test``
- ``SNAPSHOT_BACKFILL_TEST_MARIADB_URL``, e.g. ``mysql+pymysql://root@127.0.0.1/test``

The URL names a database to connect to for administration only; every test gets its own database
``sbt_<xdist worker>_<counter>_<random>`` created through it and dropped afterwards, so tests can
run in parallel (pytest-xdist) and on a server other people use. The user must be allowed to
create databases; on PostgreSQL, building orphans the way production got them
(``session_replication_role = replica``) also needs a superuser.

SQLite is always available: a file in the test's temporary directory, created once with the
library's ``open_engine(url, create=True)``; tests then open it with ``open_engine(url)``, which
refuses to create a database, exactly as the command line does.

Building a state is slow on a server (DDL, many small inserts), copying one is fast: a
``Template`` is a database filled once, and ``Backend.restore(template)`` gives a test an exact
copy of it (file copy; ``CREATE DATABASE ... TEMPLATE``; MariaDB's own ``SHOW CREATE TABLE``).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import queue
import shutil
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from snapshot_backfill.database import open_engine, resolve_url
from snapshot_backfill.testing import servers

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
MARIADB = "mariadb"
ALL_BACKENDS = (SQLITE, POSTGRESQL, MARIADB)
SERVER_BACKENDS = (POSTGRESQL, MARIADB)

ENV_VARS = servers.ENV_VARS
OPTIONS = servers.OPTIONS
DATABASE_PREFIX = "sbt_"
SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")

_counter = itertools.count(1)
T = TypeVar("T")


def skip_reason(kind: str) -> str:
    """Why the tests of a server backend are skipped in this run (``servers.skip_reason``)."""
    return servers.skip_reason(kind)


def discover(
    options: Optional[Mapping[str, Optional[str]]] = None,
    environ: Mapping[str, str] = os.environ,
) -> dict[str, Optional[URL]]:
    """Map each backend to its server URL: an option first, then the environment, else None.

    ``options`` maps a backend name to the value of its command-line option. An empty value
    counts as not set (tox blanks the variables of the environments that have no server).
    SQLite needs no server and maps to None too; it is always available.
    """
    found: dict[str, Optional[URL]] = {SQLITE: None}
    for kind in SERVER_BACKENDS:
        raw = (options or {}).get(kind) or environ.get(ENV_VARS[kind], "")
        found[kind] = resolve_url(raw) if raw.strip() else None
    return found


def worker_id() -> str:
    """The pytest-xdist worker running this process (``gw0``, ...), or ``main``."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def unique_database_name() -> str:
    """A database name no other test, worker or concurrent test session will choose."""
    return f"{DATABASE_PREFIX}{worker_id()}_{next(_counter):04d}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Template:
    """A filled database kept for a while, from which ``Backend.restore`` makes exact copies."""

    kind: str
    database_name: Optional[str] = None
    path: Optional[Path] = None


@dataclass
class Backend:
    """One test's own database: where it is, and engines for it.

    ``url`` is the database's URL (a SQLite file's URL on SQLite); ``cli_url`` is the text a
    user would pass to ``--database-url`` (password included). ``make_engine`` opens it with
    the library's ``open_engine`` and keeps the engine, so that ``close`` disposes of every
    engine a test made, even one the test forgot.

    A server database is created when first used (``url``, ``make_engine``), empty, or by
    ``restore`` as a copy of a template; either way it is dropped when the test ends.
    """

    kind: str
    server_url: Optional[URL] = None
    database_name: Optional[str] = None
    sqlite_file: Optional[Path] = None
    _created: bool = False
    _engines: list[Engine] = field(default_factory=list, repr=False)
    _siblings: list[contextlib.ExitStack] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        """The backend's name: ``sqlite``, ``postgresql`` or ``mariadb``."""
        return self.kind

    @property
    def is_sqlite(self) -> bool:
        return self.kind == SQLITE

    @property
    def url(self) -> URL:
        """The database's URL; a server database is created (empty) on first use."""
        if self.is_sqlite:
            assert self.sqlite_file is not None
            return URL.create("sqlite", database=str(self.sqlite_file))
        assert self.server_url is not None and self.database_name is not None
        if not self._created:
            with _admin_connection(self.server_url) as conn:
                _create_server_database(conn, self.kind, self.database_name)
            self._created = True
        return self.server_url.set(database=self.database_name)

    @property
    def path(self) -> Optional[Path]:
        """The SQLite database file (None on a server)."""
        return self.sqlite_file

    @property
    def cli_url(self) -> str:
        """What to pass to ``--database-url``: the file's path on SQLite, else the full URL."""
        if self.is_sqlite:
            return str(self.path)
        return self.url.render_as_string(hide_password=False)

    def make_engine(self, **engine_kwargs: Any) -> Engine:
        """Open the test's database as the command line does; disposed by ``close``."""
        engine = open_engine(self.url, **engine_kwargs)
        self._engines.append(engine)
        return engine

    def sibling(self) -> Backend:
        """Another fresh database on the same backend, dropped when this one is closed.

        For tests that compare two databases, e.g. an interrupted run with an uninterrupted one.
        """
        stack = contextlib.ExitStack()
        directory = None
        if self.is_sqlite:
            assert self.path is not None
            directory = self.path.parent / f"sibling-{len(self._siblings) + 1}"
            directory.mkdir()
        sibling = stack.enter_context(provision(self.kind, self.server_url, directory))
        self._siblings.append(stack)
        return sibling

    def dispose_engines(self) -> None:
        """Close every connection this backend's engines hold (the engines stay usable)."""
        for engine in self._engines:
            engine.dispose()

    def restore(self, template: Template) -> None:
        """Make this (fresh, empty) database an exact copy of ``template``.

        SQLite copies the file; PostgreSQL creates the database ``TEMPLATE`` the template;
        MariaDB replays the template's own ``SHOW CREATE TABLE`` (indexes, keys, checks and
        AUTO_INCREMENT counters included) and copies the rows. Sequences and counters are the
        template's, so rows a test inserts get the ids they would get in the template.
        """
        if template.kind != self.kind:
            raise ValueError(f"cannot restore a {template.kind} template into {self.kind}")
        self.dispose_engines()
        if self.is_sqlite:
            assert self.path is not None and template.path is not None
            for suffix in SQLITE_SIDE_FILES:
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
            shutil.copyfile(template.path, self.path)
            return
        assert self.server_url is not None and self.database_name is not None
        with _admin_connection(self.server_url) as conn:
            if self._created:
                _drop_server_database(conn, self.kind, self.database_name)
                self._created = False
            if self.kind == POSTGRESQL:
                conn.exec_driver_sql(
                    f'CREATE DATABASE "{self.database_name}" TEMPLATE "{template.database_name}"'
                )
            else:
                _create_server_database(conn, self.kind, self.database_name)
                self._created = True
                _copy_mariadb(conn, template.database_name, self.database_name)
            self._created = True

    def close(self) -> None:
        """Dispose of every engine made by ``make_engine`` and drop the siblings."""
        while self._engines:
            self._engines.pop().dispose()
        while self._siblings:
            self._siblings.pop().close()

    def drop(self) -> None:
        """Close, then drop the server database if it was created (SQLite: nothing to do).

        The DROP runs on a background thread (the server's work overlaps the next test's);
        ``wait_for_drops`` waits for it and reports any failure.
        """
        self.close()
        if not self.is_sqlite and self._created:
            assert self.server_url is not None and self.database_name is not None
            _dropper.submit(self.server_url, self.kind, self.database_name)
            self._created = False

    def describe(self) -> str:
        """``sqlite /tmp/.../test.sqlite`` or ``postgresql sbt_gw0_0003_1a2b3c4d``: for messages."""
        return f"{self.kind} {self.path if self.is_sqlite else self.database_name}"


@contextlib.contextmanager
def provision(
    kind: str, server_url: Optional[URL], directory: Optional[Path] = None
) -> Iterator[Backend]:
    """Yield a Backend for a new, empty database of ``kind``, then drop it.

    SQLite: ``directory/test.sqlite`` (``directory`` is required), created at once. A server:
    a database with a unique name, created through ``server_url`` when first used and dropped
    at the end even if the test failed (after every engine the test made is disposed).
    """
    if kind == SQLITE:
        if directory is None:
            raise ValueError("a SQLite backend needs a directory for its database file")
        backend = Backend(SQLITE, sqlite_file=_create_sqlite(directory / "test.sqlite"))
    elif server_url is None:
        raise ValueError(f"no server URL for {kind}: {skip_reason(kind)}")
    else:
        backend = Backend(kind, server_url=server_url, database_name=unique_database_name())
    try:
        yield backend
    finally:
        backend.drop()


def new_template(kind: str, directory: Optional[Path]) -> Template:
    """Name a template database (SQLite: ``directory/template.sqlite``); nothing is created."""
    if kind == SQLITE:
        assert directory is not None
        return Template(kind, path=directory / "template.sqlite")
    return Template(kind, database_name=unique_database_name() + "_tmpl")


def fill_template(template: Template, server_url: Optional[URL], fill: Callable[[Engine], T]) -> T:
    """Create the template's database, ``fill(engine)`` it, close every connection to it.

    The template stays until ``drop_template``; PostgreSQL copies it only while no connection
    is open to it, hence the engine is disposed here.
    """
    if template.kind == SQLITE:
        assert template.path is not None
        backend = Backend(SQLITE, sqlite_file=_create_sqlite(template.path))
    else:
        backend = Backend(
            template.kind, server_url=server_url, database_name=template.database_name
        )
    engine = backend.make_engine()
    try:
        return fill(engine)
    finally:
        engine.dispose()


def drop_template(template: Template, server_url: Optional[URL]) -> None:
    """Drop a template's database (now, not in the background); SQLite: delete the file."""
    if template.kind == SQLITE:
        if template.path is not None:
            for suffix in ("", *SQLITE_SIDE_FILES):
                template.path.with_name(template.path.name + suffix).unlink(missing_ok=True)
        return
    assert server_url is not None and template.database_name is not None
    with _admin_connection(server_url) as conn:
        _drop_server_database(conn, template.kind, template.database_name)


@contextlib.contextmanager
def template(
    kind: str,
    server_url: Optional[URL],
    directory: Optional[Path],
    fill: Callable[[Engine], T],
) -> Iterator[tuple[Template, T]]:
    """A filled template for the duration of the block (for scripts; conftest shares them)."""
    the_template = new_template(kind, directory)
    try:
        yield the_template, fill_template(the_template, server_url, fill)
    finally:
        drop_template(the_template, server_url)


def _create_sqlite(path: Path) -> Path:
    engine = open_engine(URL.create("sqlite", database=str(path)), create=True)
    try:
        # The library's create=True is only for this: every later open must find the file.
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA user_version").scalar()
            conn.rollback()
    finally:
        engine.dispose()
    return path


@contextlib.contextmanager
def _admin_connection(server_url: URL) -> Iterator[Connection]:
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _create_server_database(conn: Connection, kind: str, name: str) -> None:
    try:
        if kind == POSTGRESQL:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        else:
            conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    except sa.exc.DBAPIError as exc:
        raise RuntimeError(
            f"cannot create the test database {name} through "
            f"{conn.engine.url.render_as_string(hide_password=True)}: {exc.orig}; the {kind} "
            f"URL ({ENV_VARS[kind]} or {OPTIONS[kind]}) must name a reachable server and a "
            "user allowed to create databases"
        ) from exc


def _drop_server_database(conn: Connection, kind: str, name: str) -> None:
    if kind == POSTGRESQL:
        # FORCE: a connection a failed test left open must not keep the database alive.
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")


def _copy_mariadb(conn: Connection, source: Optional[str], target: str) -> None:
    conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
    try:
        tables = [
            row[0]
            for row in conn.exec_driver_sql(
                f"SHOW FULL TABLES FROM `{source}` WHERE Table_type = 'BASE TABLE'"
            )
        ]
        conn.exec_driver_sql(f"USE `{target}`")
        for table in tables:
            ddl = conn.exec_driver_sql(f"SHOW CREATE TABLE `{source}`.`{table}`").one()[1]
            conn.exec_driver_sql(ddl)
        for table in tables:
            conn.exec_driver_sql(
                f"INSERT INTO `{target}`.`{table}` SELECT * FROM `{source}`.`{table}`"
            )
    finally:
        conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")


class _Dropper:
    """One background thread that drops server databases in the order they were released."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Start afresh: a new queue, no thread, no failures.

        A process forked while the thread waited (a mutation tester's worker, a
        ``multiprocessing`` child) inherits the queue with that thread's waiter but not the
        thread: the child's first drop would wake the dead waiter, and its wait would never
        end. The parent still drops what it queued; the child keeps its own.
        """
        self.queue: queue.Queue[Optional[tuple[URL, str, str]]] = queue.Queue()
        self.thread: Optional[threading.Thread] = None
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def submit(self, server_url: URL, kind: str, name: str) -> None:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._work, name="drop-test-databases", daemon=True
                )
                self.thread.start()
        self.queue.put((server_url, kind, name))

    def _work(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                server_url, kind, name = item
                try:
                    with _admin_connection(server_url) as conn:
                        _drop_server_database(conn, kind, name)
                except Exception as exc:  # reported by wait(): a thread must not raise
                    self.failures.append(f"DROP DATABASE {name} ({kind}) failed: {exc}")
            finally:
                self.queue.task_done()

    def wait(self) -> list[str]:
        """Block until every submitted drop is done; return (and forget) the failures."""
        self.queue.join()
        failures, self.failures = self.failures, []
        return failures


_dropper = _Dropper()
# A script that never calls wait_for_drops still drops its databases before it exits.
atexit.register(_dropper.wait)
if hasattr(os, "register_at_fork"):  # POSIX: Windows has no fork
    os.register_at_fork(after_in_child=_dropper.forget)


def wait_for_drops() -> None:
    """Wait for the background drops; raise if one failed (a database was left behind)."""
    failures = _dropper.wait()
    if failures:
        raise RuntimeError("test databases were not dropped:\n" + "\n".join(failures))
