"""The command line's less travelled paths: a bad option value, Ctrl-C, unexpected and database
errors (with and without --debug), the progress bar on a terminal, a verify with more
problems than it lists, rollback's summary and a demo run twice in one directory."""

from __future__ import annotations

import io
import json
import re
import sqlite3
from pathlib import Path
from typing import Callable, Optional

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from snapshot_backfill import backfill
from snapshot_backfill.cli import main
from snapshot_backfill.database import open_engine
from snapshot_backfill.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from snapshot_backfill.models import Base
from snapshot_backfill.sample_data import load_sample_file

DEBUG_HINT = "(run with --debug for the traceback)"
# What the bundled sample holds for a backfill (test_data/README.md).
TO_MIGRATE, LINK_EXISTING = 51, 2


class Terminal(io.StringIO):
    """An output stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def cli(*argv: str, stderr: Optional[io.StringIO] = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), stderr if stderr is not None else io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, stdin=io.StringIO(""))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def sample_db(tmp_path: Path) -> Path:
    """The bundled sample data in a new SQLite file, not yet backfilled."""
    path = tmp_path / "bake.db"
    load_sample_file(URL.create("sqlite", database=str(path)))
    return path


def raising(error: BaseException) -> Callable[..., object]:
    def fail(*args: object, **kwargs: object) -> object:
        raise error

    return fail


def test_a_lock_timeout_that_is_not_a_number(sample_db: Path) -> None:
    code, out, err = cli("plan", "--database-url", str(sample_db), "--lock-timeout", "soon")
    assert (code, out) == (EXIT_BAD_INPUT, "")
    assert err == (
        "error: snapshot-backfill plan: argument --lock-timeout: not a number of seconds: 'soon'\n"
    )


def test_a_database_without_runs_has_nothing_to_plan(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    engine = open_engine(URL.create("sqlite", database=str(path)), create=True)
    try:
        Base.metadata.create_all(engine)
    finally:
        engine.dispose()
    code, out, err = cli("plan", "--database-url", str(path))
    assert (code, err) == (EXIT_OK, "")
    assert re.search(r"^Production runs: +0$", out, re.MULTILINE), out
    assert re.search(r"^  orphaned \(recipe gone\): +0$", out, re.MULTILINE), out
    assert "orphaned run ids" not in out
    assert "Per recipe" not in out
    assert out.endswith("Dry run: nothing was changed.\n")


def test_ctrl_c_before_the_first_batch_writes_nothing(
    sample_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sample_db.read_bytes()
    monkeypatch.setattr(backfill, "plan", raising(KeyboardInterrupt()))
    code, _, err = cli("run", "--database-url", str(sample_db), "--yes", "--no-backup")
    assert code == EXIT_INTERRUPTED
    assert err == "error: interrupted: nothing more was written\n"
    assert sample_db.read_bytes() == before


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_an_unexpected_error_is_one_line_unless_debugging(
    sample_db: Path, monkeypatch: pytest.MonkeyPatch, debug: bool
) -> None:
    monkeypatch.setattr(backfill, "plan", raising(RuntimeError("the planner fell over")))
    flags = ["--debug"] if debug else []
    code, out, err = cli(*flags, "plan", "--database-url", str(sample_db))
    assert (code, out) == (EXIT_FAILED, "")
    last_line = f"error: unexpected RuntimeError: the planner fell over {DEBUG_HINT}"
    assert err.splitlines()[-1] == last_line
    if debug:
        assert err.startswith("Traceback (most recent call last):\n")
        assert "RuntimeError: the planner fell over\n" in err
    else:
        assert err == last_line + "\n"


def _operational() -> sa_exc.DBAPIError:
    return sa_exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("disk I/O error"))


def _integrity() -> sa_exc.DBAPIError:
    return sa_exc.IntegrityError(
        "INSERT INTO recipe_snapshots ...",
        {},
        sqlite3.IntegrityError("UNIQUE constraint failed: recipe_snapshots.production_run_id"),
    )


DATABASE_ERRORS = [
    # (command, error, exit code, the error line)
    pytest.param(
        ["plan"],
        _operational,
        EXIT_BAD_INPUT,
        "error: database error: disk I/O error",
        id="operational-read",
    ),
    pytest.param(
        ["run", "--yes", "--no-backup"],
        _operational,
        EXIT_BAD_INPUT,
        "error: database error: disk I/O error (batches committed before are kept)",
        id="operational-write",
    ),
    pytest.param(
        ["run", "--yes", "--no-backup"],
        _integrity,
        EXIT_FAILED,
        "error: database error: UNIQUE constraint failed: recipe_snapshots.production_run_id",
        id="integrity",
    ),
]


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize(("command", "make_error", "exit_code", "line"), DATABASE_ERRORS)
def test_database_errors_name_the_driver_message(
    sample_db: Path,
    monkeypatch: pytest.MonkeyPatch,
    debug: bool,
    command: list[str],
    make_error: Callable[[], sa_exc.DBAPIError],
    exit_code: int,
    line: str,
) -> None:
    before = sample_db.read_bytes()
    monkeypatch.setattr(backfill, "plan", raising(make_error()))
    flags = ["--debug"] if debug else []
    code, _, err = cli(*flags, command[0], "--database-url", str(sample_db), *command[1:])
    assert code == exit_code
    assert err.splitlines()[-1] == line
    assert err.startswith("Traceback (most recent call last):\n") is debug
    if not debug:
        assert err == line + "\n"
    assert sample_db.read_bytes() == before


def test_a_terminal_gets_a_progress_bar(sample_db: Path) -> None:
    terminal = Terminal()
    code, out, _ = cli(
        "run", "--database-url", str(sample_db), "--yes", "--no-backup", stderr=terminal
    )
    assert code == EXIT_OK, out
    bar = terminal.getvalue()
    work = TO_MIGRATE + LINK_EXISTING
    assert f"{work}/{work}" in bar
    assert "100%" in bar
    assert "runs" in bar
    assert "\r" in bar  # redrawn in place, not one line per update
    assert f"Migrated {TO_MIGRATE}, linked to existing {LINK_EXISTING}," in out


def test_verify_says_how_many_problems_it_did_not_list(
    sample_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backfill, "MAX_PROBLEMS_LISTED", 3)
    code, out, _ = cli("verify", "--database-url", str(sample_db))
    assert code == EXIT_FAILED
    listed = [line for line in out.splitlines() if line.startswith("PROBLEM ")]
    assert len(listed) == 3
    verdict = re.search(r"^Verify FAILED \((\d+) problems\)", out, re.MULTILINE)
    assert verdict is not None, out
    total = int(verdict.group(1))
    # Every unlinked run that is not an orphan is a problem before the backfill.
    assert total >= TO_MIGRATE + LINK_EXISTING
    assert f"... and {total - 3} more problems\n" in out


def test_rollback_says_what_it_undid(sample_db: Path) -> None:
    assert cli("run", "--database-url", str(sample_db), "--yes", "--no-backup")[0] == EXIT_OK
    code, out, err = cli("rollback", "--database-url", str(sample_db), "--yes", "--no-backup")
    assert code == EXIT_OK
    assert "error:" not in err
    work = TO_MIGRATE + LINK_EXISTING
    assert out.startswith(
        f"Rolled back {work} journal entries: {work} runs unlinked, "
        f"{TO_MIGRATE} snapshots deleted, 0 left alone (changed since) ("
    )
    code, out, _ = cli("plan", "--database-url", str(sample_db), "--json")
    assert code == EXIT_OK
    replanned = json.loads(out)
    assert (replanned["to_migrate"], replanned["to_link_existing"]) == (TO_MIGRATE, LINK_EXISTING)


def test_a_second_demo_in_one_directory_refuses_to_overwrite_the_first(tmp_path: Path) -> None:
    code, out, err = cli("demo", "--path", str(tmp_path))
    assert code == EXIT_OK, err
    assert f"Migrated {TO_MIGRATE}, linked to existing {LINK_EXISTING}," in out
    assert "Verify OK" in out
    database = tmp_path / "bake_tracker_demo.sqlite"
    kept = database.read_bytes()
    # The first demo's database is not this invocation's to delete (issue 13, item 7).
    code, out, err = cli("demo", "--path", str(tmp_path))
    assert code == EXIT_BAD_INPUT, err
    assert f"{database} already exists" in err
    assert database.read_bytes() == kept
