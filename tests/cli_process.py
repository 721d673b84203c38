"""``snapshot-backfill`` run as a user runs it: in a new process (``cli``), the tests' one way
to do so; or the command line's ``main`` in the test's own process (``main_in_process``), which
is the same parser, command and exit code without a process's start-up, for tests about what a
command reports rather than about the process (signals, exit status, a terminal)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from snapshot_backfill.cli import main

PROCESS_TIMEOUT_S = 120


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code = code
        self.stdout = stdout
        self.stderr = stderr

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"exit {self.code}\nstdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-3000:]}"


def cli(
    *argv: str,
    cwd: Optional[Path] = None,
    env: Optional[dict[str, str]] = None,
    stdin: Optional[str] = None,
    url_env: Optional[str] = None,
) -> Result:
    """``snapshot-backfill ARGV`` in a new process (no terminal, no inherited database URL).

    ``url_env`` sets SNAPSHOT_BACKFILL_DATABASE_URL; BAKING_TRACKER_ENV is never inherited.
    """
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SNAPSHOT_BACKFILL_DATABASE_URL", "BAKING_TRACKER_ENV")
    }
    environ.update(env or {})
    if url_env is not None:
        environ["SNAPSHOT_BACKFILL_DATABASE_URL"] = url_env
    completed = subprocess.run(
        [sys.executable, "-m", "snapshot_backfill", *argv],
        capture_output=True,
        text=True,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        timeout=PROCESS_TIMEOUT_S,
        cwd=cwd,
        env=environ,
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)


def main_in_process(*argv: str) -> Result:
    """``snapshot-backfill ARGV`` as ``main`` in this process: no terminal, nothing on stdin.

    Give the database with ``--database-url``: the environment is the test process's own.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=stdout, stderr=stderr, stdin=io.StringIO(""))
    return Result(code, stdout.getvalue(), stderr.getvalue())
