"""What a user sees on a terminal (issue 14), through a real process on a pseudo-terminal.

The backup advice before the question on servers, the confirmation screen, the progress
line and the summaries.
"""

from __future__ import annotations

import os
import re
import select
import struct
import subprocess
import sys
import time

import pytest

from snapshot_backfill.errors import EXIT_OK
from snapshot_backfill.testing import states
from snapshot_backfill.testing.backends import Backend

if sys.platform == "win32":
    pytest.skip("needs a POSIX pseudo-terminal (pty, termios, fcntl)", allow_module_level=True)

# Imported only where they exist: on Windows their import would fail the collection.
import fcntl
import pty
import termios

PROCESS_TIMEOUT_S = 120
PROMPT = "[y/N]"


class Session:
    """``snapshot-backfill ARGV`` with a pseudo-terminal as its stdin, stdout and stderr."""

    def __init__(self, *argv: str, rows: int = 40, columns: int = 100) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        environ = {k: v for k, v in os.environ.items() if k != "SNAPSHOT_BACKFILL_DATABASE_URL"}
        environ.update({"COLUMNS": str(columns), "LINES": str(rows), "TERM": "xterm"})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "snapshot_backfill", *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=environ,
            close_fds=True,
        )
        os.close(slave)
        self.output = ""

    def read_until(self, text: str, timeout: float = PROCESS_TIMEOUT_S) -> str:
        """Read until ``text`` appears (or the process ends); return everything read so far."""
        deadline = time.monotonic() + timeout
        while text not in self.output and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                if self.process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the other side closed (Linux: EIO)
                break
            if not chunk:
                break
            self.output += chunk.decode("utf-8", "replace").replace("\r\n", "\n")
        return self.output

    def answer(self, text: str) -> None:
        os.write(self.master, text.encode())

    def finish(self) -> int:
        """Read to the end; return the exit code."""
        self.read_until("\0never\0")
        code = self.process.wait(timeout=PROCESS_TIMEOUT_S)
        os.close(self.master)
        return code

    def screen_before_prompt(self) -> list[str]:
        """The lines printed up to and including the question."""
        head = self.output.split(PROMPT)[0]
        return head.rstrip("\n").split("\n")


def loaded(backend: Backend) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snapshot_backfill",
            "load-sample",
            "--database-url",
            *[backend.cli_url],
        ],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
    )
    assert result.returncode == EXIT_OK, result


def server_only(backend: Backend) -> None:
    if backend.is_sqlite:
        pytest.skip("a SQLite file is backed up by the tool itself")


# --- safety before consent ------------------------------------------------------------------


@pytest.mark.process
def test_on_a_server_the_dump_to_take_is_shown_before_the_question(backend: Backend) -> None:
    server_only(backend)
    loaded(backend)
    session = Session("run", "--database-url", backend.cli_url, "--backup-taken")
    session.read_until(PROMPT)
    dump = "pg_dump" if backend.name == "postgresql" else "mysqldump"
    assert PROMPT in session.output, session.output
    assert dump in session.output.split(PROMPT)[0], session.output
    session.answer("n\n")
    assert session.finish() != EXIT_OK


# --- the confirmation screen -----------------------------------------------------------------


def _many_recipes_and_runs(backend: Backend, recipes: int, doublings: int) -> int:
    """``recipes`` recipes with a run each, then the runs doubled; return the runs to migrate."""
    from snapshot_backfill.testing import factories

    engine = backend.make_engine()
    with factories.factory_session(engine, seed=14):
        for _ in range(recipes):
            factories.ProductionRunFactory()
    with engine.begin() as conn:
        columns = [
            row[1] for row in conn.exec_driver_sql("PRAGMA table_info(production_runs)").all()
        ]
        copied = [c for c in columns if c not in ("id", "uuid")]
        names = ", ".join(copied)
        for _ in range(doublings):
            conn.exec_driver_sql(
                f"INSERT INTO production_runs (uuid, {names}) "
                f"SELECT lower(hex(randomblob(16))), {names} FROM production_runs"
            )
        total = conn.exec_driver_sql("SELECT count(*) FROM production_runs").scalar_one()
    engine.dispose()
    return int(total)


def _empty(backend: Backend) -> None:
    engine = backend.make_engine()
    states.build_state("empty", engine)
    engine.dispose()


@pytest.mark.process
def test_the_totals_and_the_question_end_a_screen_that_fits_40_rows(
    sqlite_backend: Backend,
) -> None:
    _empty(sqlite_backend)
    runs = _many_recipes_and_runs(sqlite_backend, recipes=60, doublings=5)
    assert runs >= 1000
    session = Session("run", "--database-url", sqlite_backend.cli_url, "--no-backup", rows=40)
    session.read_until(PROMPT)
    screen = session.screen_before_prompt()
    session.answer("n\n")
    assert session.finish() != EXIT_OK
    assert len(screen) <= 38, "\n".join(screen)
    question = screen[-1]
    assert f"Write {runs:,} new snapshots and link 0 runs" in question, question
    # The totals right above the question, with thousands separators.
    totals = "\n".join(screen[-7:-1])
    assert f"to migrate (new snapshot):     {runs:>10,}" in totals, totals
    assert "50 more recipes (--all-recipes lists them all)" in "\n".join(screen)
    full = Session("plan", "--database-url", sqlite_backend.cli_url, "--all-recipes")
    assert full.finish() == EXIT_OK
    assert "more recipes" not in full.output
    table = full.output.split("Per recipe:")[1].split("Production runs:")[0]
    assert len(re.findall(r"^ +\d+ ", table, re.MULTILINE)) == 60, full.output


@pytest.mark.process
def test_a_long_orphan_list_wraps_between_ids(sqlite_backend: Backend) -> None:
    _empty(sqlite_backend)
    engine = sqlite_backend.make_engine()
    from snapshot_backfill.testing import factories

    with factories.factory_session(engine, seed=15):
        orphans = [factories.ProductionRunFactory(orphaned=True).id for _ in range(20)]
    engine.dispose()
    session = Session("plan", "--database-url", sqlite_backend.cli_url, columns=50)
    assert session.finish() == EXIT_OK
    listed = [line for line in session.output.splitlines() if "orphaned run ids" in line]
    assert listed, session.output
    start = session.output.index("orphaned run ids")
    lines = session.output[start:].splitlines()
    ids_text = " ".join(lines[: 1 + sum(1 for ln in lines[1:] if ln.startswith("      "))])
    numbers = re.findall(r"\d+", ids_text.split(":", 1)[1])
    assert [int(n) for n in numbers] == sorted(orphans), session.output
    assert all(len(line) <= 50 for line in lines[:3]), session.output
