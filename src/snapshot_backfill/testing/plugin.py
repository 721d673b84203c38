"""The pytest plugin of snapshot-backfill: fixtures for an application's tests, and the battery.

Registered through the ``pytest11`` entry point, so installing ``snapshot-backfill[testing]``
makes it available to every pytest run; it is inert unless asked for. Its fixtures run only in
a test that names them, and the invariant battery (``test_battery.py`` beside this module) is
collected only with ``--snapshot-backfill-url``::

    pytest --pyargs snapshot_backfill.testing --snapshot-backfill-url sqlite:///copy.db

Fixtures (override any of them in a ``conftest.py``; the names all start with
``snapshot_backfill_`` so that they meet no fixture of the application's own):

``snapshot_backfill_url``
    The database the other fixtures use: a new SQLite file in the test's ``tmp_path``.
    Override it to return a URL (or a string) of a database of your own; it must be empty
    for ``snapshot_backfill_state``.
``snapshot_backfill_engine``
    An engine on that database, opened as the command line opens it, disposed afterwards.
``snapshot_backfill_state``
    ``build(name, engine=None) -> StateInfo``: builds a named state (``states.STATE_NAMES``,
    and ``pre_snapshot_schema``) into the engine's empty database, by default
    ``snapshot_backfill_engine``; a state that cannot exist there is skipped with the reason.

This module imports only pytest and the migrator at import time: pytest loads it in every
project where the package is installed, with or without the ``[testing]`` extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import pytest
from sqlalchemy.engine import URL, Engine

from snapshot_backfill.database import open_engine, resolve_url
from snapshot_backfill.errors import BackfillError

if TYPE_CHECKING:
    from snapshot_backfill.testing.battery_run import BatteryRun
    from snapshot_backfill.testing.expectations import StateInfo

URL_OPTION = "--snapshot-backfill-url"
SCRATCH_URL_OPTION = "--snapshot-backfill-scratch-url"
BATCH_SIZE_OPTION = "--snapshot-backfill-batch-size"
HERE = Path(__file__).resolve().parent


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("snapshot-backfill", "snapshot-backfill")
    group.addoption(
        URL_OPTION,
        default=None,
        metavar="URL",
        help="run snapshot-backfill's invariant battery (pytest --pyargs "
        "snapshot_backfill.testing) on a scratch copy of this database; the database itself "
        "is only read. Without it the plugin collects nothing",
    )
    group.addoption(
        SCRATCH_URL_OPTION,
        default=None,
        metavar="URL",
        help="PostgreSQL/MariaDB: an empty database for the battery's scratch copy (default: a "
        "new database on the same server, dropped afterwards)",
    )
    group.addoption(
        BATCH_SIZE_OPTION,
        default=None,
        type=int,
        metavar="N",
        help="the batch size the battery runs the migrator with (default: the migrator's)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a URL that cannot be one before anything runs, in one line."""
    for option in (URL_OPTION, SCRATCH_URL_OPTION):
        value = config.getoption(option)
        if value is not None:
            try:
                resolve_url(value)
            except BackfillError as exc:
                raise pytest.UsageError(f"{option}: {exc}") from None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> Optional[bool]:
    """Leave the battery uncollected unless a database is named for it."""
    if config.getoption(URL_OPTION) is None and collection_path.resolve().is_relative_to(HERE):
        return True
    return None  # no opinion: every other path is as pytest and the project decide


def pytest_report_header(config: pytest.Config) -> Optional[str]:
    url = config.getoption(URL_OPTION)
    if url is None:
        return None
    from snapshot_backfill.database import display_url

    return f"snapshot-backfill battery on a scratch copy of {display_url(resolve_url(url))}"


# --- fixtures for an application's own tests -------------------------------------------------


@pytest.fixture
def snapshot_backfill_url(tmp_path: Path) -> Union[URL, str]:
    """The database the snapshot-backfill fixtures use (default: a new SQLite file)."""
    return URL.create("sqlite", database=str(tmp_path / "snapshot-backfill.sqlite"))


@pytest.fixture
def snapshot_backfill_engine(snapshot_backfill_url: Union[URL, str]) -> Iterator[Engine]:
    """An engine on ``snapshot_backfill_url``, opened as the command line opens it."""
    url = (
        snapshot_backfill_url
        if isinstance(snapshot_backfill_url, URL)
        else resolve_url(snapshot_backfill_url)
    )
    engine = open_engine(url, create=True)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def snapshot_backfill_state(
    snapshot_backfill_engine: Engine,
) -> Callable[..., StateInfo]:
    """``build(name, engine=None)``: a named state in an empty database, and its expectations."""

    def build(name: str, engine: Optional[Engine] = None) -> StateInfo:
        from snapshot_backfill.testing.states import StateUnavailable, build_state

        try:
            return build_state(name, engine if engine is not None else snapshot_backfill_engine)
        except StateUnavailable as exc:
            pytest.skip(str(exc))

    return build


def state_params() -> list[Any]:
    """The named states as pytest parameters, the slow ones marked ``slow``."""
    from snapshot_backfill.testing.states import SLOW_STATES, STATE_NAMES

    return [
        pytest.param(name, id=name, marks=[pytest.mark.slow] if name in SLOW_STATES else [])
        for name in STATE_NAMES
    ]


# --- the battery ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def snapshot_backfill_battery(pytestconfig: pytest.Config) -> BatteryRun:
    """The battery, run once on a scratch copy of ``--snapshot-backfill-url``'s database."""
    try:
        from snapshot_backfill.testing.battery_run import run_on_copy
    except ImportError as exc:  # a tree without the battery (testing.battery, .scratch)
        pytest.skip(f"the battery is not installed: {exc}")

    url = pytestconfig.getoption(URL_OPTION)
    if url is None:
        pytest.skip(f"pass {URL_OPTION} URL to run the battery")
    scratch_url = pytestconfig.getoption(SCRATCH_URL_OPTION)
    try:
        return run_on_copy(
            resolve_url(url),
            scratch_url=resolve_url(scratch_url) if scratch_url else None,
            batch_size=pytestconfig.getoption(BATCH_SIZE_OPTION),
        )
    except BackfillError as exc:  # no database there, no rights to copy it, ...
        pytest.fail(f"the battery cannot run on {url}: {exc}", pytrace=False)
