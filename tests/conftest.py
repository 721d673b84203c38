"""Fixtures: a fresh database per test on every backend, and the named states built into it.

Thin wrappers over ``snapshot_backfill.testing`` (``backends``, ``states``: no pytest there):

``backend``
    Parametrized over sqlite, postgresql (marked ``postgresql``) and mariadb (marked
    ``mariadb``): a fresh, empty database of the test's own, dropped afterwards. Server cases
    are skipped, with the reason, when their URL is not configured::

        def test_something(backend):
            engine = backend.make_engine()       # open_engine(url), disposed after the test
            main(["plan", "--database-url", backend.cli_url])

``backend_kind``
    The parametrization alone (session scope): ``"sqlite"``, ``"postgresql"``, ``"mariadb"``;
    for a module-scoped fixture that provisions its own database
    (``state_templates.provisioned(backend_kind, name, directory)``).
``sqlite_backend``
    The same, SQLite only.
``engine``
    ``backend.make_engine()``.
``state``
    Parametrized over every named state (``states.STATE_NAMES``): puts it into the
    ``backend``'s database and returns its ``StateInfo``. A state that cannot exist on the
    backend (the application's SQLite schema on a server) is skipped with the reason.
``build_state``
    ``build_state("deleted_recipe") -> StateInfo``, for a test that wants one given state
    (call it once per database: it expects the fresh, empty database).

Each state is built once per backend and test session and copied into each test's database
(``StateTemplates``); ``states.build_state(name, engine)`` builds one directly.

Rows of a test's own, through ``snapshot_backfill.testing.factories``, on any backend::

    def test_an_orphan_is_skipped(backend, build_state):
        build_state("empty")                       # our six tables
        engine = backend.make_engine()
        with factories.factory_session(engine):    # commits at the end of the block
            run = factories.ProductionRunFactory(orphaned=True)
        assert backfill.plan(engine).orphaned_run_ids == [run.id]

Whole-database comparisons: ``fingerprint.take(engine)`` and ``fingerprint.assert_same``.

Servers come from ``--postgresql-url``/``--mariadb-url`` or the environment variables
``SNAPSHOT_BACKFILL_TEST_POSTGRESQL_URL``/``SNAPSHOT_BACKFILL_TEST_MARIADB_URL``, else the default
local address, else a throwaway server (``snapshot_backfill.testing.servers``), looked up when a
test first needs one; the run's summary says which was used or why the tests were skipped.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import filelock
import pytest
from sqlalchemy.engine import URL, Engine

from snapshot_backfill.testing import expectations, plugin, servers, states
from snapshot_backfill.testing.backends import (
    ENV_VARS,
    MARIADB,
    OPTIONS,
    POSTGRESQL,
    SQLITE,
    Backend,
    drop_template,
    fill_template,
    new_template,
    provision,
    wait_for_drops,
)

# The `process` marker and the check that every test starting a process carries it.
pytest_plugins = ["process_marker"]

BACKEND_PARAMS = [
    pytest.param(SQLITE, id=SQLITE),
    pytest.param(POSTGRESQL, id=POSTGRESQL, marks=pytest.mark.postgresql),
    pytest.param(MARIADB, id=MARIADB, marks=pytest.mark.mariadb),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("snapshot-backfill", "database servers for the backend tests")
    for kind in (POSTGRESQL, MARIADB):
        group.addoption(
            OPTIONS[kind],
            default=None,
            metavar="URL",
            help=f"run the {kind} cases against this server (default: ${ENV_VARS[kind]}); "
            "each test creates and drops its own database through it",
        )


def _servers(config: pytest.Config) -> servers.Servers:
    found = servers.for_this_run({kind: config.getoption(OPTIONS[kind]) for kind in OPTIONS})
    assert found is not None, "pytest_configure sets up the run's servers directory"
    return found


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"database backends: sqlite; postgresql and mariadb found when first needed "
        f"({servers.MODE_VAR}={servers.mode()})"
    ]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Name the server each backend used, or why its tests were skipped."""
    if config.stash.get(_servers_dir, None) is None:
        return
    recorded = _servers(config).recorded()
    if recorded:
        terminalreporter.section("database servers")
        for found in recorded:
            terminalreporter.line(found.describe())


@pytest.fixture(scope="session", autouse=True)
def _dropped_databases() -> Iterator[None]:
    """At the end of the session, wait until every test database is dropped (or fail)."""
    yield
    wait_for_drops()


@pytest.fixture(scope="session")
def server_urls(pytestconfig: pytest.Config) -> dict[str, Optional[URL]]:
    """Each backend's server URL (None: none to be had; SQLite needs none), found on first use."""
    return _servers(pytestconfig).urls()


@pytest.fixture(scope="session", params=BACKEND_PARAMS)
def backend_kind(request: pytest.FixtureRequest, server_urls: dict[str, Optional[URL]]) -> str:
    """sqlite, postgresql or mariadb (each case marked; servers skipped when not configured)."""
    kind: str = request.param
    if kind != SQLITE and server_urls[kind] is None:
        pytest.skip(servers.skip_reason(kind))
    return kind


@pytest.fixture
def backend(
    backend_kind: str, server_urls: dict[str, Optional[URL]], tmp_path: Path
) -> Iterator[Backend]:
    """A fresh, empty database of the test's own on each backend; dropped after the test."""
    with provision(backend_kind, server_urls[backend_kind], tmp_path) as the_backend:
        yield the_backend


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    """A fresh SQLite database file of the test's own."""
    with provision(SQLITE, None, tmp_path) as the_backend:
        yield the_backend


@pytest.fixture
def engine(backend: Backend) -> Engine:
    """An engine on the test's database, opened as the command line opens it."""
    return backend.make_engine()


TEMPLATES_DIR_VAR = "SNAPSHOT_BACKFILL_TEST_TEMPLATES_DIR"
_templates_dir = pytest.StashKey[Path]()
_servers_dir = pytest.StashKey[Path]()


class StateTemplates:
    """Each named state built once per backend per test session, copied into each test's DB.

    Building a state is the slow part of a test (DDL on MariaDB, ORM factories); copying a
    built one is fast and exact (``Backend.restore``), and every test still has its own
    database. The templates are shared by the xdist workers through a directory the controller
    creates (``pytest_configure``): the first worker to need one builds it under a file lock and
    pickles its ``StateInfo`` there; the controller drops them all at the end
    (``pytest_unconfigure``).
    """

    def __init__(self, directory: Path, server_urls: dict[str, Optional[URL]]) -> None:
        self.directory = directory
        self.server_urls = server_urls
        self.loaded: dict[tuple[str, str], Any] = {}

    def restore(self, backend: Backend, name: str) -> expectations.StateInfo:
        """Make ``backend``'s fresh database hold state ``name``; skip if it cannot exist."""
        key = (backend.kind, name)
        if key not in self.loaded:
            self.loaded[key] = self._get(backend.kind, name)
        built = self.loaded[key]
        if isinstance(built, states.StateUnavailable):
            pytest.skip(str(built))
        the_template, info = built
        backend.restore(the_template)
        return info

    @contextlib.contextmanager
    def provisioned(
        self, kind: str, name: str, directory: Path
    ) -> Iterator[tuple[Backend, expectations.StateInfo]]:
        """A database of its own on backend ``kind`` holding state ``name`` (module fixtures)."""
        with provision(kind, self.server_urls[kind], directory) as backend:
            yield backend, self.restore(backend, name)

    def _get(self, kind: str, name: str) -> Any:
        entry = self.directory / f"{kind}-{name}"
        with filelock.FileLock(str(entry) + ".lock"):
            done = entry.with_suffix(".pickle")
            if done.exists():
                return pickle.loads(done.read_bytes())
            entry.mkdir(exist_ok=True)
            the_template = new_template(kind, entry)
            # Registered before it exists: a failed build is dropped at the end too.
            (entry / "template.pickle").write_bytes(
                pickle.dumps((the_template, self.server_urls[kind]))
            )
            try:
                built: Any = (
                    the_template,
                    fill_template(
                        the_template,
                        self.server_urls[kind],
                        lambda engine: states.build_state(name, engine),
                    ),
                )
            except states.StateUnavailable as exc:
                built = exc
            done.write_bytes(pickle.dumps(built))
            return built


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("MUTANT_UNDER_TEST") == "stats":
        # `tox -e mutation`: mutmut runs the suite in this process once to record which tests
        # reach each function, and keeps the mode in a copy of its own as well. A process a
        # test starts would inherit the mode from the environment, and fail to load mutmut's
        # configuration wherever its working directory is not the project (its records would
        # be lost anyway): it runs the code unmutated instead. Mutant runs keep the variable.
        del os.environ["MUTANT_UNDER_TEST"]
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist)
        try:
            servers.mode()
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        directory = tempfile.mkdtemp(prefix="snapshot-backfill-templates-")
        os.environ[TEMPLATES_DIR_VAR] = directory  # inherited by the xdist workers
        config.stash[_templates_dir] = Path(directory)
        directory = tempfile.mkdtemp(prefix="snapshot-backfill-servers-")
        os.environ[servers.DIRECTORY_VAR] = directory
        config.stash[_servers_dir] = Path(directory)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under a mutant (`tox -e mutation`), run the fastest tests first, the backends taking turns.

    mutmut runs each mutant's tests with ``-x`` and stops at the first failure, but hands them
    over as a set, in no useful order: a mutant the first quick test kills could wait for minutes
    of lock and process tests first. The durations are the ones mutmut recorded in its stats
    phase, in the process it forked this run from. Ordered by duration alone, the SQLite tests
    came first, and a mutant of a MariaDB branch waited for every SQLite and PostgreSQL test
    (about 3 minutes) before one that could kill it: so each backend's fastest test comes, then
    each one's second fastest, and so on. Stable, so equal times keep pytest's order.
    """
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", ""):
        return
    try:
        from mutmut.state import state
    except ImportError:  # another mutmut: keep pytest's order
        return
    durations = state().duration_by_test
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))
    turn: dict[pytest.Item, int] = {}
    taken: dict[str, int] = {}
    for item in items:
        backend = next((m for m in (POSTGRESQL, MARIADB) if item.get_closest_marker(m)), "sqlite")
        turn[item] = taken[backend] = taken.get(backend, -1) + 1
    items.sort(key=turn.__getitem__)


def pytest_unconfigure(config: pytest.Config) -> None:
    try:
        _drop_templates(config)
    finally:
        # After the templates: they live on the servers.
        if config.stash.get(_servers_dir, None) is not None:
            failures = _servers(config).stop()
            if failures:
                raise RuntimeError("\n".join(failures))


def _drop_templates(config: pytest.Config) -> None:
    directory = config.stash.get(_templates_dir, None)
    if directory is None:
        return
    failures = []
    for registered in sorted(directory.glob("*/template.pickle")):
        the_template, server_url = pickle.loads(registered.read_bytes())
        try:
            drop_template(the_template, server_url)
        except Exception as exc:  # report every leftover, not just the first
            failures.append(f"{the_template}: {exc}")
    shutil.rmtree(directory, ignore_errors=True)
    if failures:
        raise RuntimeError("state templates were not dropped:\n" + "\n".join(failures))


@pytest.fixture(scope="session")
def state_templates(server_urls: dict[str, Optional[URL]]) -> StateTemplates:
    """The session's built states (see StateTemplates)."""
    return StateTemplates(Path(os.environ[TEMPLATES_DIR_VAR]), server_urls)


@pytest.fixture(params=plugin.state_params())
def state(
    request: pytest.FixtureRequest, backend: Backend, state_templates: StateTemplates
) -> expectations.StateInfo:
    """Every named state, in the backend's database; returns its expectations."""
    return state_templates.restore(backend, request.param)


@pytest.fixture
def build_state(
    backend: Backend, state_templates: StateTemplates
) -> Callable[[str], expectations.StateInfo]:
    """Put a named state into the backend's (fresh) database: ``build_state("empty")``."""
    return lambda name: state_templates.restore(backend, name)
