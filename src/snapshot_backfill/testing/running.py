"""Running the migrator in tests: at a state's batch size, failing instead of looping."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from sqlalchemy.engine import Engine

from snapshot_backfill import backfill
from snapshot_backfill.backfill import (
    Progress,
    RollbackReport,
    RunReport,
)
from snapshot_backfill.testing.expectations import StateInfo

LOCK_TIMEOUT_S = 5.0


class RunawayRun(AssertionError):
    """A run or rollback took far more batches than the state allows: it is looping."""


def _guard(
    limit: int, what: str, then: Optional[Callable[[Progress], None]]
) -> Callable[[Progress], None]:
    def on_progress(progress: Progress) -> None:
        if progress.batches > limit:
            raise RunawayRun(f"{what} is on batch {progress.batches}, more than {limit}: a loop")
        if then is not None:
            then(progress)

    return on_progress


def _batches(rows: int, size: int) -> int:
    return -(-rows // size)


def run_backfill(
    engine: Engine,
    info: StateInfo,
    *,
    on_progress: Optional[Callable[[Progress], None]] = None,
    batch_size: Optional[int] = None,
) -> RunReport:
    """``backfill.run`` at the state's batch size; a run that loops fails instead of hanging."""
    size = batch_size or info.batch_size
    limit = 2 * _batches(len(info.unlinked), size) + 5
    return backfill.run(
        engine,
        batch_size=size,
        lock_timeout=LOCK_TIMEOUT_S,
        on_progress=_guard(limit, f"a run of state {info.name}", on_progress),
    )


def rollback_backfill(
    engine: Engine, info: StateInfo, *, batch_size: Optional[int] = None
) -> RollbackReport:
    """``backfill.rollback`` at the state's batch size; a rollback that loops fails."""
    size = batch_size or info.batch_size
    limit = 2 * _batches(len(info.work), size) + 5
    return backfill.rollback(
        engine,
        batch_size=size,
        lock_timeout=LOCK_TIMEOUT_S,
        on_progress=_guard(limit, f"a rollback of state {info.name}", None),
    )


def sqlite_files(path: Path) -> dict[str, bytes]:
    """A SQLite database's file and its side files (journal, WAL, shared memory), as bytes."""
    out = {}
    for suffix in ("", "-journal", "-wal", "-shm"):
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            out[candidate.name] = candidate.read_bytes()
    return out
