"""Take an online copy of a SQLite database before writing to it (SQLite's backup API)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from .database import sqlite_uri
from .errors import BadInputError


def default_backup_path(database: Path, *, now: Optional[datetime] = None) -> Path:
    """Name a new timestamped backup next to ``database``: ``name.backup-YYYYmmddTHHMMSSZ.ext``.

    Two backups within one second (an upgrade, then a run) get ``-2``, ``-3``, ... appended.
    """
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    candidate = database.with_name(f"{database.stem}.backup-{stamp}{database.suffix}")
    number = 1
    while candidate.exists():
        number += 1
        candidate = database.with_name(f"{database.stem}.backup-{stamp}-{number}{database.suffix}")
    return candidate


def backup_sqlite(database: Path, destination: Optional[Path] = None) -> Path:
    """Copy ``database`` to ``destination`` (default: timestamped, next to it) and return it.

    Uses the backup API, so the copy is consistent even while the application writes, and
    refuses to overwrite an existing file.
    """
    target = destination or default_backup_path(database)
    if target.exists():
        raise BadInputError(f"backup file {target} already exists; choose another --backup PATH")
    if not target.parent.is_dir():
        raise BadInputError(f"cannot write backup {target}: directory {target.parent} is missing")
    try:
        source = sqlite3.connect(f"{sqlite_uri(database)}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BadInputError(f"cannot back up {database}: {exc}") from None
    try:
        copy = sqlite3.connect(str(target))
        try:
            source.backup(copy)
        finally:
            copy.close()
    except sqlite3.Error as exc:
        target.unlink(missing_ok=True)
        raise BadInputError(f"cannot back up {database} to {target}: {exc}") from None
    finally:
        source.close()
    return target
