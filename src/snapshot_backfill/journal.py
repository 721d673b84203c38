"""The journal: the table in which the migrator records every link it makes, for rollback.

One row per production run the tool linked: which snapshot, whether the tool created that
snapshot or only linked a row that already existed, the run's ``updated_at`` before the link
(copied in SQL, byte for byte) and the ``updated_at`` the tool wrote. ``rollback`` undoes
exactly these rows and drops the table once it is empty, so a fully rolled-back database
carries no trace of the tool.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Index, Integer, MetaData, String, Table, inspect
from sqlalchemy.engine import Connection

JOURNAL_TABLE_NAME = "snapshot_backfill_journal"

journal_metadata = MetaData()
journal = Table(
    JOURNAL_TABLE_NAME,
    journal_metadata,
    # INTEGER PRIMARY KEY without AUTOINCREMENT: SQLite then keeps no sqlite_sequence row,
    # which would outlive the table.
    Column("id", Integer, primary_key=True),
    Column("run_token", String(36), nullable=False),
    Column("production_run_id", Integer, nullable=False),
    Column("snapshot_id", Integer, nullable=False),
    Column("created_snapshot", Boolean, nullable=False),
    Column("previous_updated_at", DateTime, nullable=False),
    Column("linked_at", DateTime, nullable=False),
    Index("ix_snapshot_backfill_journal_production_run_id", "production_run_id"),
)


def journal_exists(conn: Connection) -> bool:
    """Tell whether the journal table exists."""
    return inspect(conn).has_table(JOURNAL_TABLE_NAME)


def create_journal(conn: Connection) -> None:
    """Create the journal table if it does not exist (in the caller's transaction)."""
    journal_metadata.create_all(conn, checkfirst=True)


def drop_journal(conn: Connection) -> None:
    """Drop the journal table (in the caller's transaction)."""
    journal_metadata.drop_all(conn, checkfirst=True)
