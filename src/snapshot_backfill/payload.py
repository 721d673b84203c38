"""Build a recipe snapshot's JSON payload from the recipe's current rows, once per recipe."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Integer, MetaData, Table, insert, select
from sqlalchemy.engine import Connection

from .models import ingredients, recipe_ingredients, recipe_snapshots, recipes

# The recipes columns a snapshot's recipe_data holds, in the application's order (schema.md).
RECIPE_DATA_COLUMNS = (
    "name",
    "category",
    "source",
    "yield_quantity",
    "yield_unit",
    "yield_description",
    "estimated_time_minutes",
    "notes",
    "variant_name",
    "is_production_ready",
)

MISSING_INGREDIENT_NAME = "Unknown"
MISSING_INGREDIENT_SLUG = ""


# A run's payloads live in a temporary table of its own connection, one row per recipe, so each
# batch creates its snapshots with one INSERT ... SELECT that joins it: every payload crosses
# the wire (and is bound) once per run instead of once per snapshot, and no Python runs per
# row. Profiled at 100k runs on SQLite, the per-row parameters (dicts, uuid4, DateTime binds)
# were ~3 s of an 11 s run; see benchmarks/README.md. Same column types as recipe_snapshots.
_payload_metadata = MetaData()
payload_table = Table(
    "snapshot_backfill_payloads",
    _payload_metadata,
    Column("recipe_id", Integer, primary_key=True, autoincrement=False),
    Column("recipe_data", recipe_snapshots.c.recipe_data.type, nullable=False),
    Column("ingredients_data", recipe_snapshots.c.ingredients_data.type, nullable=False),
    prefixes=["TEMPORARY"],
)


@dataclass(frozen=True)
class SnapshotPayload:
    """The two JSON texts a recipe snapshot stores."""

    recipe_data: str
    ingredients_data: str


def recipe_data(recipe: Any) -> dict[str, Any]:
    """The ``recipe_data`` object of a snapshot, from a ``recipes`` row."""
    return {
        "name": recipe.name,
        "category": recipe.category,
        "source": recipe.source,
        "yield_quantity": None if recipe.yield_quantity is None else float(recipe.yield_quantity),
        "yield_unit": recipe.yield_unit,
        "yield_description": recipe.yield_description,
        "estimated_time_minutes": recipe.estimated_time_minutes,
        "notes": recipe.notes,
        "variant_name": recipe.variant_name,
        "is_production_ready": bool(recipe.is_production_ready),
    }


def ingredient_data(line: Any) -> dict[str, Any]:
    """One element of ``ingredients_data``, from a recipe line joined to its ingredient."""
    missing = line.display_name is None
    return {
        "ingredient_id": line.ingredient_id,
        "ingredient_name": MISSING_INGREDIENT_NAME if missing else line.display_name,
        "ingredient_slug": MISSING_INGREDIENT_SLUG if missing else (line.slug or ""),
        "quantity": float(line.quantity),
        "unit": line.unit,
        "notes": line.notes,
    }


def load_payloads(conn: Connection, recipe_ids: Iterable[int]) -> dict[int, SnapshotPayload]:
    """Build the payload of each existing recipe in ``recipe_ids`` with two queries."""
    wanted: Sequence[int] = sorted(set(recipe_ids))
    if not wanted:
        return {}
    recipe_rows = conn.execute(
        select(recipes.c.id, *(recipes.c[name] for name in RECIPE_DATA_COLUMNS)).where(
            recipes.c.id.in_(wanted)
        )
    ).all()
    lines: dict[int, list[dict[str, Any]]] = {row.id: [] for row in recipe_rows}
    line_rows = conn.execute(
        select(
            recipe_ingredients.c.recipe_id,
            recipe_ingredients.c.ingredient_id,
            recipe_ingredients.c.quantity,
            recipe_ingredients.c.unit,
            recipe_ingredients.c.notes,
            ingredients.c.display_name,
            ingredients.c.slug,
        )
        .select_from(
            recipe_ingredients.outerjoin(
                ingredients, ingredients.c.id == recipe_ingredients.c.ingredient_id
            )
        )
        .where(recipe_ingredients.c.recipe_id.in_(wanted))
        .order_by(recipe_ingredients.c.recipe_id, recipe_ingredients.c.id)
    )
    for line in line_rows:
        if line.recipe_id in lines:
            lines[line.recipe_id].append(ingredient_data(line))
    return {
        row.id: SnapshotPayload(json.dumps(recipe_data(row)), json.dumps(lines[row.id]))
        for row in recipe_rows
    }


def create_payload_table(conn: Connection) -> None:
    """Create the (empty) temporary payload table on ``conn``, replacing a stale one.

    A pooled connection may still hold the table of an earlier run that stopped half-way.
    """
    _payload_metadata.drop_all(conn, checkfirst=True)
    _payload_metadata.create_all(conn)


def drop_payload_table(conn: Connection) -> None:
    """Drop the temporary payload table of ``conn`` (closing the connection drops it too)."""
    _payload_metadata.drop_all(conn, checkfirst=True)


def store_payloads(conn: Connection, payloads: dict[int, SnapshotPayload]) -> None:
    """Add the payloads of recipes the temporary payload table does not hold yet."""
    if payloads:
        conn.execute(
            insert(payload_table),
            [
                {
                    "recipe_id": recipe_id,
                    "recipe_data": p.recipe_data,
                    "ingredients_data": p.ingredients_data,
                }
                for recipe_id, p in payloads.items()
            ],
        )
