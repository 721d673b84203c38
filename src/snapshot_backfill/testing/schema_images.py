"""What the schema-upgrade tests compare: schemas reflected comparably, interrupted upgrades.

``schema_fingerprint`` reflects tables (columns, keys, indexes, unique and check constraints)
into plain data that two backends or two ways of building can agree on;
``create_snapshot_schema`` makes the reference an upgrade must reach; ``interrupt_at`` is an
``on_step`` hook that stands for a crash between two upgrade steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from snapshot_backfill.models import (
    Base,
)
from snapshot_backfill.schema_upgrade import UpgradeStep

# Every table the models define: what an upgraded database must reflect like create_all's.
MODEL_TABLES = tuple(Base.metadata.tables)
SchemaImage = dict[str, dict[str, Any]]


class Interrupted(Exception):
    """Raised from ``on_step`` to stand for a crash between two steps."""


def interrupt_at(number: int, seen: list[int]) -> Callable[[UpgradeStep], None]:
    """An ``on_step`` that records step numbers and crashes before step ``number``."""

    def on_step(step: UpgradeStep) -> None:
        seen.append(step.number)
        if step.number == number:
            raise Interrupted(f"interrupted before step {number}: {step.description}")

    return on_step


def create_snapshot_schema(engine: Engine) -> None:
    """Create the six tables as the models define them today (the reference of an upgrade)."""
    metadata = Base.metadata
    if engine.dialect.name == "sqlite":
        # A copy: SQLAlchemy's create_all on a server marks the models' use_alter key
        # (fk_production_runs_recipe_snapshot_id) "added by ALTER" for the rest of the
        # process, and create_all on SQLite, which cannot ALTER it in, then leaves it out.
        # (A copy loses ddl_if, which only matters on MariaDB.)
        metadata = sa.MetaData()
        for table in Base.metadata.sorted_tables:
            table.to_metadata(metadata)
    metadata.create_all(engine)


def schema_fingerprint(
    engine: Engine,
    tables: Sequence[str],
    *,
    column_order: bool = True,
    foreign_key_names: bool = True,
) -> SchemaImage:
    """Reflect ``tables``: columns, keys, indexes, unique and check constraints, comparably."""
    fingerprint: SchemaImage = {}
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        for table in tables:
            columns = [
                (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                for c in inspector.get_columns(table)
            ]
            fingerprint[table] = {
                "columns": columns if column_order else sorted(columns),
                "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
                "foreign_keys": sorted(
                    (
                        (fk["name"] or "") if foreign_key_names else "",
                        tuple(fk["constrained_columns"]),
                        fk["referred_table"],
                        tuple(fk["referred_columns"]),
                        (fk.get("options") or {}).get("ondelete") or "",
                    )
                    for fk in inspector.get_foreign_keys(table)
                ),
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                    for i in inspector.get_indexes(table)
                ),
                "unique": sorted(
                    (u["name"] or "", tuple(u["column_names"]))
                    for u in inspector.get_unique_constraints(table)
                ),
                "checks": sorted(
                    (c["name"] or "", " ".join(c["sqltext"].split()))
                    for c in inspector.get_check_constraints(table)
                ),
            }
    return fingerprint


def upgraded_schema_fingerprint(engine: Engine) -> SchemaImage:
    """``schema_fingerprint`` of the models' tables, as an upgrade and create_all can agree.

    PostgreSQL can only append a column, so there its column order cannot follow create_all's.
    """
    return schema_fingerprint(
        engine, MODEL_TABLES, column_order=engine.dialect.name != "postgresql"
    )


def assert_same_schema(found: SchemaImage, expected: SchemaImage, context: str) -> None:
    """Compare two fingerprints piece by piece, naming the table and piece that differs."""
    assert sorted(found) == sorted(expected), context
    for table in expected:
        for piece in expected[table]:
            assert found[table][piece] == expected[table][piece], (
                f"{context}: {table}.{piece} differs\n"
                f"  upgraded: {found[table][piece]}\n  expected: {expected[table][piece]}"
            )
