"""What a user sees on a terminal (issue 14), through a real process on a pseudo-terminal.

The backup advice before the question on servers, the confirmation screen, the progress
line and the summaries.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from snapshot_backfill.errors import EXIT_OK

from backends import Backend

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
