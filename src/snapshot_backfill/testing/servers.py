"""Find or start the PostgreSQL and MariaDB servers the tests run against, once per test run.

For each server backend, in this order:

1. the URL given by the pytest option (``--postgresql-url``) or the environment
   (``SNAPSHOT_BACKFILL_TEST_POSTGRESQL_URL``), used as given;
2. a server answering at the default local address (``DEFAULT_URLS``), probed with a short
   connect timeout;
3. a throwaway server started in the run's directory and removed at the end of the run:
   PostgreSQL from the ``pgserver`` wheel (PostgreSQL binaries bundled), MariaDB from an
   installed ``mariadbd`` binary;
4. none: the backend's tests are skipped, and ``Found.detail`` says why.

``SNAPSHOT_BACKFILL_TEST_SERVERS`` chooses how far to look: ``auto`` (the default: all of the
above), ``throwaway`` (a given URL, else a throwaway server: the local address is not probed)
or ``none`` (no server, even if a URL is given).

A run's processes (the pytest-xdist workers) share one ``Servers`` through a directory: the
first process that needs a backend finds it under a file lock and records the outcome in
``<kind>.json``, the others read it; the process that made the directory calls ``stop()``
at the end, which stops the throwaway servers and removes the directory. No pytest in here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import filelock
import sqlalchemy as sa
from sqlalchemy.engine import URL

from snapshot_backfill.database import resolve_url

POSTGRESQL = "postgresql"
MARIADB = "mariadb"
SERVER_BACKENDS = (POSTGRESQL, MARIADB)

ENV_VARS = {
    POSTGRESQL: "SNAPSHOT_BACKFILL_TEST_POSTGRESQL_URL",
    MARIADB: "SNAPSHOT_BACKFILL_TEST_MARIADB_URL",
}
OPTIONS = {POSTGRESQL: "--postgresql-url", MARIADB: "--mariadb-url"}
DEFAULT_URLS = {
    POSTGRESQL: "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    MARIADB: "mysql+pymysql://root@127.0.0.1:3306/test",
}
MODE_VAR = "SNAPSHOT_BACKFILL_TEST_SERVERS"
MODES = ("auto", "throwaway", "none")
DIRECTORY_VAR = "SNAPSHOT_BACKFILL_TEST_SERVERS_DIR"
PROBE_TIMEOUT_S = 2
START_TIMEOUT_S = 60
# Every skip of a server backend's test starts so; .ci/summary.py counts them.
SKIP_PREFIX = "no {kind} server: "

# Sources of a Found server.
OPTION, ENVIRONMENT, LOCAL, THROWAWAY, MISSING = (
    "option",
    "environment",
    "local address",
    "throwaway",
    "none",
)


@dataclass(frozen=True)
class Found:
    """Where a backend's server is (``url``: with its password, None if none), or why not."""

    kind: str
    source: str
    url: Optional[str]
    detail: str
    stop: dict[str, Any] = field(default_factory=dict)  # how to stop a throwaway server

    @property
    def sa_url(self) -> Optional[URL]:
        return sa.make_url(self.url) if self.url else None

    def skip_reason(self) -> str:
        """The reason given by every test of this backend that is skipped."""
        return SKIP_PREFIX.format(kind=self.kind) + self.detail

    def describe(self) -> str:
        """One line for the run's summary."""
        if self.url is None:
            return f"{self.kind}: skipped: {self.detail}"
        return f"{self.kind}: {self.source}: {self.detail}"


def mode(environ: Mapping[str, str] = os.environ) -> str:
    """The value of ``SNAPSHOT_BACKFILL_TEST_SERVERS`` (``auto`` when unset or empty)."""
    value = environ.get(MODE_VAR, "").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{MODE_VAR}={value!r}: expected one of {', '.join(MODES)}")
    return value


def probe(url: URL, timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """Connect to ``url`` and run ``SELECT 1``: None if it answered, else what went wrong."""
    try:
        engine = sa.create_engine(
            url, poolclass=sa.NullPool, connect_args={"connect_timeout": timeout}
        )
    except Exception as exc:  # a driver that is not installed
        return f"{type(exc).__name__}: {exc}"
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return None
    except Exception as exc:
        orig = getattr(exc, "orig", None) or exc
        return " ".join(str(orig).split())[:200] or type(orig).__name__
    finally:
        engine.dispose()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def start_postgresql(directory: Path) -> Found:
    """A throwaway PostgreSQL from the ``pgserver`` wheel, its data in ``directory``.

    pgserver listens on a Unix socket in the data directory (a TCP port on Windows); run as
    root, it runs the server as a system user of its own, ``pgserver``, created if absent.
    """
    try:
        pgserver = _import_pgserver()
    except ImportError:
        return Found(POSTGRESQL, MISSING, None, "pgserver is not installed (pip install pgserver)")
    pgdata = directory / "pgdata"
    # cleanup_mode=None: the server outlives the worker that started it; stop() ends it.
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    url = resolve_url(server.get_uri("postgres"))
    return Found(
        POSTGRESQL,
        THROWAWAY,
        url.render_as_string(hide_password=False),
        f"pgserver (PostgreSQL {_postgres_version(url)}) in {pgdata}",
        stop={"pgdata": str(pgdata), "user": server.system_user},
    )


def _import_pgserver() -> Any:
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (pgserver's lock lives there) and
        # picks a directory of its own: nothing for a test run to act on.
        warnings.simplefilter("ignore", UserWarning)
        import pgserver

        return pgserver


def _postgres_version(url: URL) -> str:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SHOW server_version").scalar())
    finally:
        engine.dispose()


def _which(*names: str) -> Optional[str]:
    # sbin is often not on an unprivileged user's PATH, yet that is where mariadbd lives.
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


# The throwaway servers' processes, kept referenced: a Popen collected while its process runs
# warns (ResourceWarning), and the process is meant to outlive this one's use of it.
_processes: list[subprocess.Popen[bytes]] = []


def start_mariadb(directory: Path) -> Found:
    """A throwaway MariaDB: ``mariadb-install-db`` into ``directory``, then ``mariadbd``.

    It listens on 127.0.0.1 on a port that was free; root connects without a password.
    """
    server = _which("mariadbd", "mysqld")
    install = _which("mariadb-install-db", "mysql_install_db")
    if server is None or install is None:
        return Found(MARIADB, MISSING, None, "no mariadbd (and mariadb-install-db) installed")
    datadir = directory / "mariadb"
    log = directory / "mariadb.log"
    as_root = ["--user=root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    with open(log, "ab") as out:
        installed = subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *as_root,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=START_TIMEOUT_S,
            check=False,
        )
    if installed.returncode != 0:
        failed = f"{install} failed (exit {installed.returncode}): {log}"
        return Found(MARIADB, MISSING, None, failed)
    port = free_port()
    pid_file = directory / "mariadb.pid"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [
                server,
                "--no-defaults",
                f"--datadir={datadir}",
                "--bind-address=127.0.0.1",
                f"--port={port}",
                f"--socket={directory / 'mariadb.sock'}",
                f"--pid-file={pid_file}",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=64M",
                *as_root,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # not stopped by a Ctrl-C meant for pytest: stop() does it
        )
    _processes.append(process)
    url = URL.create(
        "mysql+pymysql", username="root", host="127.0.0.1", port=port, database="mysql"
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    error = probe(url)
    while error is not None:
        if process.poll() is not None or time.monotonic() > deadline:
            _terminate(process.pid, pid_file)
            return Found(MARIADB, MISSING, None, f"mariadbd did not start ({error}): {log}")
        time.sleep(0.2)
        error = probe(url)
    return Found(
        MARIADB,
        THROWAWAY,
        url.render_as_string(hide_password=False),
        f"{server} on 127.0.0.1:{port}, data in {datadir}",
        stop={"pid": process.pid, "pid_file": str(pid_file)},
    )


def _terminate(pid: int, pid_file: Path, timeout: float = START_TIMEOUT_S) -> bool:
    """Stop mariadbd ``pid`` (SIGTERM: a clean shutdown) and wait; False if it had to be killed.

    A server this process started is waited for; another's is gone once it removed its pid
    file (its parent, an exited worker, may leave it a zombie that still has a pid).
    """
    own = [process for process in _processes if process.pid == pid]
    if own:
        own[0].terminate()
        try:
            own[0].wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            own[0].kill()
            own[0].wait()
            return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while pid_file.exists():
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
            return False
        time.sleep(0.1)
    return True


class Servers:
    """The servers of one test run, found once and shared by its processes through ``directory``.

    ``options`` maps a backend to the value of its pytest option (None: not given).
    """

    def __init__(
        self,
        directory: Path,
        options: Optional[Mapping[str, Optional[str]]] = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.directory = directory
        self.options = dict(options or {})
        self.environ = environ
        self._found: dict[str, Found] = {}

    def get(self, kind: str) -> Found:
        """The server of ``kind``: found (or started) by the first process to ask, then recorded."""
        if kind not in self._found:
            record = self.directory / f"{kind}.json"
            with filelock.FileLock(str(record) + ".lock"):
                if record.exists():
                    found = Found(**json.loads(record.read_text()))
                else:
                    found = self._find(kind)
                    record.write_text(json.dumps(asdict(found)))
            self._found[kind] = found
        return self._found[kind]

    def urls(self) -> ServerUrls:
        """Each backend's URL, looked up on first use (``sqlite`` maps to None)."""
        return ServerUrls(self)

    def recorded(self) -> list[Found]:
        """What every process of the run found so far (a backend no test needed is absent)."""
        return [
            Found(**json.loads(record.read_text()))
            for kind in SERVER_BACKENDS
            if (record := self.directory / f"{kind}.json").exists()
        ]

    def stop(self) -> list[str]:
        """Stop the run's throwaway servers and remove the directory; return what failed."""
        failures = []
        for found in self.recorded():
            if found.source != THROWAWAY:
                continue
            try:
                _stop(found)
            except Exception as exc:  # report every server left running, not just the first
                failures.append(f"{found.kind} throwaway server not stopped: {exc}")
        if failures:  # its data stays where it is, for the server that still uses it
            failures.append(f"left in place: {self.directory}")
        else:
            shutil.rmtree(self.directory, ignore_errors=True)
        return failures

    def _find(self, kind: str) -> Found:
        the_mode = mode(self.environ)
        if the_mode == "none":
            return Found(kind, MISSING, None, f"{MODE_VAR}=none")
        for source, raw in (
            (OPTION, self.options.get(kind)),
            (ENVIRONMENT, self.environ.get(ENV_VARS[kind])),
        ):
            if raw and raw.strip():
                url = resolve_url(raw)
                given = OPTIONS[kind] if source == OPTION else ENV_VARS[kind]
                return Found(
                    kind,
                    source,
                    url.render_as_string(hide_password=False),
                    f"{url.render_as_string(hide_password=True)} ({given})",
                )
        why = [f"{ENV_VARS[kind]} not set"]
        if the_mode == "auto":
            default = sa.make_url(DEFAULT_URLS[kind])
            error = probe(default)
            if error is None:
                return Found(kind, LOCAL, DEFAULT_URLS[kind], DEFAULT_URLS[kind])
            why.append(f"nothing usable at {default.host}:{default.port} ({error})")
        else:
            why.append(f"{MODE_VAR}=throwaway: local address not probed")
        start = start_postgresql if kind == POSTGRESQL else start_mariadb
        directory = self.directory / kind
        directory.mkdir(exist_ok=True)
        try:
            found = start(directory)
        except Exception as exc:  # a throwaway that fails to start is a reason to skip
            found = Found(kind, MISSING, None, f"throwaway server failed: {exc}")
        if found.url is not None:
            return found
        return Found(kind, MISSING, None, "; ".join([*why, found.detail]))


def _stop(found: Found) -> None:
    if found.kind == POSTGRESQL:
        pgserver = _import_pgserver()
        # pg_ctl is made at import time, one wrapper per bundled binary: unknown to type checkers.
        pg_ctl = getattr(pgserver, "pg_ctl")  # noqa: B009
        pg_ctl(
            ["-w", "-m", "fast", "stop"],
            pgdata=Path(found.stop["pgdata"]),
            user=found.stop.get("user"),
            timeout=START_TIMEOUT_S,
        )
    elif not _terminate(int(found.stop["pid"]), Path(found.stop["pid_file"])):
        raise RuntimeError(f"mariadbd (pid {found.stop['pid']}) had to be killed")


class ServerUrls(Mapping[str, Optional[URL]]):
    """``{"sqlite": None, "postgresql": URL or None, "mariadb": URL or None}``, looked up lazily.

    A run that needs no server (``-k sqlite``) never probes or starts one.
    """

    def __init__(self, servers: Servers) -> None:
        self.servers = servers

    def __getitem__(self, kind: str) -> Optional[URL]:
        if kind not in SERVER_BACKENDS:
            if kind == "sqlite":
                return None
            raise KeyError(kind)
        return self.servers.get(kind).sa_url

    def __iter__(self) -> Iterator[str]:
        return iter(("sqlite", *SERVER_BACKENDS))

    def __len__(self) -> int:
        return 1 + len(SERVER_BACKENDS)

    def skip_reason(self, kind: str) -> str:
        return self.servers.get(kind).skip_reason()


def for_this_run(options: Optional[Mapping[str, Optional[str]]] = None) -> Optional[Servers]:
    """The run's ``Servers`` in a process that did not make its directory (an xdist worker)."""
    directory = os.environ.get(DIRECTORY_VAR)
    return Servers(Path(directory), options) if directory else None


def skip_reason(kind: str) -> str:
    """Why ``kind``'s tests are skipped in this run (what the run recorded, else what to set)."""
    servers = for_this_run()
    if servers is not None and (servers.directory / f"{kind}.json").exists():
        return servers.get(kind).skip_reason()
    return SKIP_PREFIX.format(kind=kind) + f"set {ENV_VARS[kind]} (or {OPTIONS[kind]}) to run"
