"""Take an online copy of a SQLite database before writing to it (SQLite's backup API)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from .database import sqlite_uri
from .errors import BadInputError

# SQLite's own side files of a database, which a failed copy may leave beside it.
_SIDE_FILES = ("-journal", "-wal", "-shm")


def sibling_mode(database: Path) -> int:
    """The permission bits for a file written beside ``database``: its own, never executable.

    A backup, the lock file and a report are no more readable than the database itself.
    """
    return stat.S_IMODE(database.stat().st_mode) & 0o666


def restrict_mode(path: Path, mode: int) -> None:
    """Take from ``path`` every permission bit ``mode`` lacks (never adds one)."""
    with contextlib.suppress(OSError):
        current = stat.S_IMODE(path.stat().st_mode)
        if current & ~mode:
            os.chmod(path, current & mode)


def write_text_file(path: Path, text: str, mode: Optional[int] = None) -> None:
    """Write ``text`` to ``path``; with ``mode``, no more permissions than that, before any data.

    A new file is created with ``mode`` (the umask may take more away); an existing one loses
    the bits ``mode`` lacks before it is truncated and written.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        if mode is not None:
            restrict_mode(path, mode)
        stream.write(text)


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
    # Side files that exist already are not ours to delete if the copy fails.
    theirs = {suffix for suffix in _SIDE_FILES if target.with_name(target.name + suffix).exists()}
    try:
        # Created empty (a valid SQLite file) with the source's permissions before any data
        # is copied: a backup of a private database is never readable by others, not even
        # while it is written. O_EXCL: a file created meanwhile is never overwritten.
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, sibling_mode(database)))
    except FileExistsError:
        source.close()
        raise BadInputError(
            f"backup file {target} already exists; choose another --backup PATH"
        ) from None
    except OSError as exc:
        source.close()
        raise BadInputError(f"cannot write backup {target}: {exc.strerror or exc}") from None
    try:
        copy = sqlite3.connect(str(target))
        try:
            source.backup(copy)
        finally:
            copy.close()
    except (sqlite3.Error, OSError) as exc:
        # Leave nothing behind: the partial copy and the journal SQLite wrote for it (a full
        # disk can keep SQLite from removing its journal).
        for leftover in (target, *(target.with_name(target.name + s) for s in _SIDE_FILES)):
            if leftover == target or leftover.name[len(target.name) :] not in theirs:
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        raise BadInputError(f"cannot back up {database} to {target}: {exc}") from None
    finally:
        source.close()
    return target
