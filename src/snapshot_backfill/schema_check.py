"""Check that a database has the tables and columns the migrator reads and writes."""

from __future__ import annotations

from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from .database import display_url
from .errors import SchemaMissingError
from .models import (
    SNAPSHOT_ERA_COLUMNS,
    SNAPSHOT_ERA_TABLES,
    ingredients,
    production_runs,
    recipe_ingredients,
    recipe_snapshots,
    recipes,
)
from .payload import RECIPE_DATA_COLUMNS

# Every column the migrator touches; a real database may have more tables and columns.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    recipes.name: ("id", *RECIPE_DATA_COLUMNS),
    ingredients.name: ("id", "display_name", "slug"),
    recipe_ingredients.name: ("id", "recipe_id", "ingredient_id", "quantity", "unit", "notes"),
    production_runs.name: ("id", "recipe_id", "recipe_snapshot_id", "produced_at", "updated_at"),
    recipe_snapshots.name: tuple(c.name for c in recipe_snapshots.columns),
}


def missing_schema(conn: Connection) -> list[str]:
    """Name each required table or column the database lacks, e.g. ``column recipes.notes``."""
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    missing: list[str] = []
    for table, columns in REQUIRED_COLUMNS.items():
        if table not in tables:
            missing.append(f"table {table}")
            continue
        present = {c["name"] for c in inspector.get_columns(table)}
        missing.extend(f"column {table}.{c}" for c in columns if c not in present)
    return missing


def _is_snapshot_era(item: str) -> bool:
    kind, _, name = item.partition(" ")
    if kind == "table":
        return name in SNAPSHOT_ERA_TABLES
    table, _, column = name.partition(".")
    return table in SNAPSHOT_ERA_TABLES or column in SNAPSHOT_ERA_COLUMNS.get(table, ())


def require_schema(conn: Connection) -> None:
    """Raise SchemaMissingError naming what is missing and the command that adds it."""
    missing = missing_schema(conn)
    if not missing:
        return
    url = display_url(conn.engine.url)
    if all(_is_snapshot_era(item) for item in missing):
        advice = (
            "this looks like a database from before the snapshot feature; bring it up to date "
            f"first with: snapshot-backfill upgrade-schema --database-url '{url}'"
        )
    else:
        advice = "is this a bake-tracker database?"
    raise SchemaMissingError(
        f"{url} lacks what the backfill needs: {', '.join(missing)}; {advice}", missing
    )
