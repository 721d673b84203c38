"""Every bad input: one clear line, no traceback, exit 2, and the database exactly as it was."""

from __future__ import annotations

import contextlib
import io
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest
import sqlalchemy as sa

from snapshot_backfill import backfill
from snapshot_backfill.cli import main
from snapshot_backfill.errors import EXIT_BAD_INPUT
from snapshot_backfill.locking import sqlite_lock_path
from snapshot_backfill.models import pre_snapshot_metadata
from snapshot_backfill.testing import fingerprint, states
from snapshot_backfill.testing.backends import Backend

# Each database command, as a user would type it to write (run, rollback) or only read.
COMMANDS = [
    pytest.param(["plan"], id="plan"),
    pytest.param(["run", "--yes", "--no-backup"], id="run"),
    pytest.param(["verify"], id="verify"),
    pytest.param(["rollback", "--yes", "--no-backup"], id="rollback"),
]


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, stdin=io.StringIO(""))
    return code, out.getvalue(), err.getvalue()


def assert_one_clear_line(code: int, out: str, err: str, *needles: str) -> None:
    shown = f"exit {code}\n--- stdout\n{out}--- stderr\n{err}"
    assert code == EXIT_BAD_INPUT, shown
    assert "Traceback" not in err, shown
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    for needle in needles:
        assert needle in lines[0], shown


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_sqlite_file_is_never_created(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "bake_trakcer.db"
    code, out, err = cli(command[0], "--database-url", str(path), *command[1:])
    assert_one_clear_line(code, out, err, str(path), "does not exist")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_a_file_that_is_not_a_database(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "recipes.csv"
    path.write_text("name,category\n" + "Sugar Cookies,Cookies\n" * 200)
    before = path.read_bytes()
    code, out, err = cli(command[0], "--database-url", str(path), *command[1:])
    assert_one_clear_line(code, out, err, "not a SQLite database")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipes.csv"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_database_from_before_snapshots_names_what_is_missing(
    backend: Backend, command: list[str]
) -> None:
    engine = backend.make_engine()
    pre_snapshot_metadata().create_all(engine)
    before = fingerprint.take(engine)
    code, out, err = cli(command[0], "--database-url", backend.cli_url, *command[1:])
    assert_one_clear_line(
        code,
        out,
        err,
        "table recipe_snapshots",
        "column production_runs.recipe_snapshot_id",
        "column recipes.variant_name",
        "snapshot-backfill upgrade-schema --database-url",
    )
    fingerprint.assert_same(before, fingerprint.take(engine), "an old schema must stay as it was")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_database_that_is_not_bake_tracker(backend: Backend, command: list[str]) -> None:
    engine = backend.make_engine()
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total INTEGER)")
    before = fingerprint.take(engine)
    code, out, err = cli(command[0], "--database-url", backend.cli_url, *command[1:])
    assert_one_clear_line(code, out, err, "table production_runs", "bake-tracker database")
    fingerprint.assert_same(before, fingerprint.take(engine), "a foreign database was touched")


@contextlib.contextmanager
def another_program_locks(backend: Backend) -> Iterator[None]:
    """Hold a lock on production_runs from another connection, as a busy application might."""
    if backend.is_sqlite:
        holder = sqlite3.connect(str(backend.path), isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    with backend.make_engine().connect() as conn:
        if backend.kind == "postgresql":
            conn.exec_driver_sql("LOCK TABLE production_runs IN ACCESS EXCLUSIVE MODE")
        else:
            conn.exec_driver_sql("LOCK TABLES production_runs WRITE")
        try:
            yield
        finally:
            if backend.kind != "postgresql":
                conn.exec_driver_sql("UNLOCK TABLES")
            conn.rollback()


class StopMigrating(Exception):
    pass


def _stop_after_two_batches(progress: backfill.Progress) -> None:
    if progress.batches == 2:
        raise StopMigrating


@pytest.mark.parametrize("command", COMMANDS)
def test_a_locked_database_is_an_error_not_a_hang(
    backend: Backend, build_state: Callable[[str], object], command: list[str]
) -> None:
    build_state("from_sample_data")
    engine = backend.make_engine()
    # Half migrated, so that rollback too has something to undo (without a journal it has
    # nothing to do and never touches production_runs).
    with contextlib.suppress(StopMigrating):
        backfill.run(engine, batch_size=7, on_progress=_stop_after_two_batches)
    before = fingerprint.take(engine)
    with another_program_locks(backend):
        code, out, err = cli(
            command[0], "--database-url", backend.cli_url, "--lock-timeout", "0", *command[1:]
        )
    assert_one_clear_line(code, out, err, "lock")
    fingerprint.assert_same(before, fingerprint.take(engine), "a locked database was written")


def _make_immutable(path: Path) -> bool:
    """Make ``path`` unwritable even for root (chattr +i); False where that is impossible."""
    try:
        subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        path.chmod(0o444)
        try:
            with path.open("r+b"):
                return False  # still writable: running as root on a file system without +i
        except PermissionError:
            return True
    return True


def _make_mutable(path: Path) -> None:
    with contextlib.suppress(OSError):  # no chattr (macOS, Windows): the chmod was all
        subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)
    path.chmod(0o644)


@pytest.mark.process
@pytest.mark.parametrize("command", [c for c in COMMANDS if c.id in ("run", "rollback")])
def test_a_read_only_sqlite_file(sqlite_backend: Backend, command: list[str]) -> None:
    engine = sqlite_backend.make_engine()
    states.build_state("from_sample_data", engine)
    # Half migrated, so that rollback has something to undo (with nothing to undo it says so
    # and exits 0 without writing, read-only or not).
    with contextlib.suppress(StopMigrating):
        backfill.run(engine, batch_size=7, on_progress=_stop_after_two_batches)
    engine.dispose()
    path = sqlite_backend.path
    assert path is not None
    # The preparing run's lock file (gone already on Windows, where filelock removes it at
    # release): the command under test makes none.
    sqlite_lock_path(path).unlink(missing_ok=True)
    before = path.read_bytes()
    if not _make_immutable(path):
        pytest.skip("cannot make a file read-only here (root without chattr +i support)")
    try:
        code, out, err = cli(command[0], "--database-url", str(path), *command[1:])
    finally:
        _make_mutable(path)
    assert_one_clear_line(code, out, err, "read-only")
    assert path.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".lock")]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unreachable_server(command: list[str]) -> None:
    url = "postgresql://baker:s3cret@127.0.0.1:1/bakery"
    code, out, err = cli(command[0], "--database-url", url, *command[1:])
    assert_one_clear_line(code, out, err, "cannot open", "baker:***@127.0.0.1:1/bakery")
    assert "s3cret" not in err + out


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://baker:s3cret@db:port/bakery",
        "nosuchdb://baker:s3cret@host/x",
        "://",
    ],
)
def test_an_invalid_url(url: str) -> None:
    code, out, err = cli("plan", "--database-url", url)
    assert_one_clear_line(code, out, err)
    assert "s3cret" not in err + out


def test_no_database_given_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SNAPSHOT_BACKFILL_DATABASE_URL", raising=False)
    code, out, err = cli("plan")
    assert_one_clear_line(code, out, err, "--database-url", "SNAPSHOT_BACKFILL_DATABASE_URL")


def test_old_schema_message_is_the_exact_command(sqlite_backend: Backend) -> None:
    engine = sqlite_backend.make_engine()
    pre_snapshot_metadata().create_all(engine)
    code, _, err = cli("plan", "--database-url", sqlite_backend.cli_url)
    assert code == EXIT_BAD_INPUT
    assert f"snapshot-backfill upgrade-schema --database-url '{sqlite_backend.path}'" in err
    assert sa.inspect(engine).get_table_names()  # the old tables are all still there
