"""``snapshot-backfill`` run in a new process, as a user runs it: the tests' one way to do so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

PROCESS_TIMEOUT_S = 120


class Result:
    def __init__(self, completed: subprocess.CompletedProcess[str]) -> None:
        self.code = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr

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
    return Result(
        subprocess.run(
            [sys.executable, "-m", "snapshot_backfill", *argv],
            capture_output=True,
            text=True,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            timeout=PROCESS_TIMEOUT_S,
            cwd=cwd,
            env=environ,
        )
    )
