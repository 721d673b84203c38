"""Finding the test servers: a given URL, else the default local address, else a throwaway one."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import pytest
import sqlalchemy as sa

from snapshot_backfill.testing import servers
from snapshot_backfill.testing.servers import (
    DEFAULT_URLS,
    ENV_VARS,
    MARIADB,
    MODE_VAR,
    POSTGRESQL,
    Found,
    Servers,
)


class Calls:
    """Stands in for the probe and the throwaway starters, and counts what was asked."""

    def __init__(self, probe_error: Optional[str] = "connection refused", start_ok: bool = True):
        self.probe_error = probe_error
        self.start_ok = start_ok
        self.probed: list[str] = []
        self.started: list[str] = []

    def probe(self, url: sa.URL, timeout: float = 0) -> Optional[str]:
        self.probed.append(url.render_as_string(hide_password=False))
        return self.probe_error

    def starter(self, kind: str) -> Any:
        def start(directory: Path) -> Found:
            self.started.append(kind)
            assert directory.is_dir()
            if not self.start_ok:
                return Found(kind, servers.MISSING, None, f"no {kind} binary here")
            return Found(kind, servers.THROWAWAY, f"postgresql://t@{kind}-host/x", "a throwaway")

        return start


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    the_calls = Calls()
    monkeypatch.setattr(servers, "probe", the_calls.probe)
    monkeypatch.setattr(servers, "start_postgresql", the_calls.starter(POSTGRESQL))
    monkeypatch.setattr(servers, "start_mariadb", the_calls.starter(MARIADB))
    return the_calls


def test_the_mode_is_auto_unless_set_and_an_unknown_one_is_refused() -> None:
    assert servers.mode({}) == "auto"
    assert servers.mode({MODE_VAR: " Throwaway "}) == "throwaway"
    with pytest.raises(ValueError, match=f"{MODE_VAR}='sometimes'"):
        servers.mode({MODE_VAR: "sometimes"})


def test_a_given_url_is_used_as_given_the_option_first(calls: Calls, tmp_path: Path) -> None:
    environ = {ENV_VARS[POSTGRESQL]: "postgresql://env@h/db", ENV_VARS[MARIADB]: "mysql://m@h/db"}
    run = Servers(tmp_path, {POSTGRESQL: "postgresql://opt:pw@h/db"}, environ)
    found = run.get(POSTGRESQL)
    assert (found.source, found.url) == (servers.OPTION, "postgresql+psycopg://opt:pw@h/db")
    assert "pw" not in found.detail, "the summary shows no password"
    assert run.get(MARIADB).url == "mysql+pymysql://m@h/db"
    assert calls.probed == [] and calls.started == []


def test_nothing_given_the_default_local_address_answers(calls: Calls, tmp_path: Path) -> None:
    calls.probe_error = None
    found = Servers(tmp_path, {}, {}).get(MARIADB)
    assert (found.source, found.url) == (servers.LOCAL, DEFAULT_URLS[MARIADB])
    assert calls.probed == [DEFAULT_URLS[MARIADB]] and calls.started == []


def test_nothing_answers_a_throwaway_server_is_started(calls: Calls, tmp_path: Path) -> None:
    found = Servers(tmp_path, {}, {}).get(POSTGRESQL)
    assert (found.source, found.url) == (servers.THROWAWAY, "postgresql://t@postgresql-host/x")
    assert calls.probed == [DEFAULT_URLS[POSTGRESQL]] and calls.started == [POSTGRESQL]


def test_throwaway_mode_skips_the_local_address(calls: Calls, tmp_path: Path) -> None:
    calls.probe_error = None  # a local server answers, and is not asked
    found = Servers(tmp_path, {}, {MODE_VAR: "throwaway"}).get(POSTGRESQL)
    assert found.source == servers.THROWAWAY
    assert calls.probed == [] and calls.started == [POSTGRESQL]


def test_none_mode_uses_no_server_even_a_given_one(calls: Calls, tmp_path: Path) -> None:
    environ = {MODE_VAR: "none", ENV_VARS[POSTGRESQL]: "postgresql://u@h/db"}
    found = Servers(tmp_path, {POSTGRESQL: "postgresql://o@h/db"}, environ).get(POSTGRESQL)
    assert found.url is None
    assert found.skip_reason() == f"no postgresql server: {MODE_VAR}=none"
    assert calls.probed == [] and calls.started == []


def test_when_none_can_be_had_the_reason_names_every_step(calls: Calls, tmp_path: Path) -> None:
    calls.start_ok = False
    found = Servers(tmp_path, {}, {}).get(MARIADB)
    assert found.url is None and found.sa_url is None
    assert found.skip_reason() == (
        f"no mariadb server: {ENV_VARS[MARIADB]} not set; nothing usable at 127.0.0.1:3306 "
        "(connection refused); no mariadb binary here"
    )
    assert found.describe().startswith("mariadb: skipped: ")


def test_a_throwaway_that_fails_to_start_is_a_reason_to_skip(
    calls: Calls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(directory: Path) -> Found:
        raise OSError("disk full")

    monkeypatch.setattr(servers, "start_postgresql", broken)
    found = Servers(tmp_path, {}, {MODE_VAR: "throwaway"}).get(POSTGRESQL)
    assert found.url is None
    assert found.detail.endswith("throwaway server failed: disk full")


def test_the_first_process_finds_the_others_read_its_record(calls: Calls, tmp_path: Path) -> None:
    first = Servers(tmp_path, {}, {})
    assert first.get(POSTGRESQL).source == servers.THROWAWAY
    other = Servers(tmp_path, {}, {})  # another xdist worker of the same run
    assert other.get(POSTGRESQL) == first.get(POSTGRESQL)
    assert calls.started == [POSTGRESQL], "one throwaway server per run, not one per worker"
    assert [found.kind for found in other.recorded()] == [POSTGRESQL]
    urls = other.urls()
    assert list(urls) == ["sqlite", POSTGRESQL, MARIADB] and len(urls) == 3
    assert urls["sqlite"] is None
    assert urls[POSTGRESQL] == sa.make_url("postgresql://t@postgresql-host/x")
    with pytest.raises(KeyError):
        urls["oracle"]


def test_the_skip_reason_is_the_runs_record_or_what_to_set(
    calls: Calls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls.start_ok = False
    monkeypatch.setenv(servers.DIRECTORY_VAR, str(tmp_path))
    assert servers.skip_reason(MARIADB) == (
        f"no mariadb server: set {ENV_VARS[MARIADB]} (or --mariadb-url) to run"
    )
    Servers(tmp_path, {}, {}).get(MARIADB)
    assert servers.skip_reason(MARIADB).endswith("no mariadb binary here")
    monkeypatch.delenv(servers.DIRECTORY_VAR)
    assert servers.for_this_run() is None


def test_a_probe_of_a_port_nobody_listens_on_says_why() -> None:
    url = sa.make_url(f"postgresql+psycopg://postgres@127.0.0.1:{servers.free_port()}/test")
    error = servers.probe(url, timeout=2)
    assert error is not None and error.strip()


def test_a_probe_without_the_driver_says_why() -> None:
    assert servers.probe(sa.make_url("nosuchdialect://u@h/db")) is not None


@pytest.mark.process
@pytest.mark.mariadb
@pytest.mark.skipif(
    servers._which("mariadbd", "mysqld") is None, reason="no mariadbd installed to start"
)
@pytest.mark.parametrize("stopped_by", ["its own process", "another process"])
def test_a_throwaway_mariadb_answers_then_is_stopped_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopped_by: str
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    found = Servers(run_dir, {}, {MODE_VAR: "throwaway"}).get(MARIADB)
    assert found.source == servers.THROWAWAY, found.detail
    assert found.sa_url is not None and servers.probe(found.sa_url) is None
    pid_file = Path(found.stop["pid_file"])
    assert pid_file.exists()
    own = servers._processes
    (started,) = [p for p in own if p.pid == found.stop["pid"]]
    if stopped_by == "another process":  # an xdist worker started it, the controller stops it
        monkeypatch.setattr(servers, "_processes", [])
    try:
        assert Servers(run_dir).stop() == []
        assert not pid_file.exists() and not run_dir.exists()
        assert servers.probe(found.sa_url) is not None, "the server still answers"
    finally:
        started.wait(timeout=60)  # reaped: no zombie, no ResourceWarning
        own.remove(started)


@pytest.mark.process
@pytest.mark.postgresql
def test_a_throwaway_postgresql_answers_then_is_stopped_and_removed(
    request: pytest.FixtureRequest,
) -> None:
    pytest.importorskip("pgserver", reason="pgserver is not installed")
    # As the suite does (conftest), not under tmp_path: run as root, the server runs as another
    # user, and every pytest session that starts resets pytest's base directory to mode 0700.
    run_dir = Path(tempfile.mkdtemp(prefix="snapshot-backfill-servers-test-"))
    request.addfinalizer(lambda: shutil.rmtree(run_dir, ignore_errors=True))
    found = Servers(run_dir, {}, {MODE_VAR: "throwaway"}).get(POSTGRESQL)
    assert found.source == servers.THROWAWAY, found.detail
    assert found.sa_url is not None and servers.probe(found.sa_url) is None
    assert Servers(run_dir).stop() == []
    assert not run_dir.exists()
    assert servers.probe(found.sa_url) is not None, "the server still answers"
