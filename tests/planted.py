"""Planting a defect in a migrated database: the statements the defect suites share.

``tests/test_verify_defects.py`` plants them for ``verify``; ``test_invariants_find_defects``
and ``test_battery_finds_defects`` for the harness's own checks.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from snapshot_backfill.database import transaction_without_foreign_keys
from snapshot_backfill.models import production_runs as runs
from snapshot_backfill.models import recipe_snapshots as snaps


def unlink(run_id: int) -> Any:
    return sa.update(runs).where(runs.c.id == run_id).values(recipe_snapshot_id=None)


def link(run_id: int, snapshot_id: int) -> Any:
    return sa.update(runs).where(runs.c.id == run_id).values(recipe_snapshot_id=snapshot_id)


def set_snapshot(snapshot_id: int, **values: Any) -> Any:
    return sa.update(snaps).where(snaps.c.id == snapshot_id).values(**values)


def snapshot_of(engine: Engine, run_id: int) -> int:
    """The id of the snapshot row of ``run_id``."""
    with engine.connect() as conn:
        snapshot_id: int = conn.execute(
            sa.select(snaps.c.id).where(snaps.c.production_run_id == run_id)
        ).scalar_one()
    return snapshot_id


def execute_without_foreign_keys(engine: Engine, *statements: Any) -> None:
    """Run ``statements`` in one transaction, foreign keys off (a defect may break them)."""
    with transaction_without_foreign_keys(engine) as conn:
        for statement in statements:
            conn.execute(statement)
