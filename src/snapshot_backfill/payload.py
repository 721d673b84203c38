"""Build a recipe snapshot's JSON payload from the recipe's current rows, once per recipe."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from sqlalchemy import Column, Integer, MetaData, Table, Text, bindparam, insert, select, text
from sqlalchemy.dialects import mysql
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
_PAYLOAD_TEXT = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
_payload_metadata = MetaData()
payload_table = Table(
    "snapshot_backfill_payloads",
    _payload_metadata,
    Column("recipe_id", Integer, primary_key=True, autoincrement=False),
    # LONGTEXT on MariaDB/MySQL: the payload's own capacity is checked against the real
    # recipe_snapshots column (column_capacity), which may be wider than TEXT.
    Column("recipe_data", _PAYLOAD_TEXT, nullable=False),
    Column("ingredients_data", _PAYLOAD_TEXT, nullable=False),
    prefixes=["TEMPORARY"],
)


@dataclass(frozen=True)
class SnapshotPayload:
    """The two JSON texts a recipe snapshot stores."""

    recipe_data: str
    ingredients_data: str


PAYLOAD_COLUMNS = ("recipe_data", "ingredients_data")


class PayloadError(ValueError):
    """A recipe whose snapshot cannot be built or stored; ``str`` says why."""


@dataclass(frozen=True)
class ColumnCapacity:
    """How much one text column holds: characters and bytes (None: no limit worth checking)."""

    max_chars: Optional[int] = None
    max_bytes: Optional[int] = None


@dataclass
class PayloadBuild:
    """The payloads of the recipes that could be built, and why the others could not."""

    payloads: dict[int, SnapshotPayload] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)


def _number(value: Any, what: str) -> float:
    """``value`` as a finite float, or PayloadError naming ``what``.

    The snapshot's JSON must be strict JSON: NaN and Infinity have no JSON spelling (Python's
    json writes ``NaN``/``Infinity``, which strict parsers reject), so they are refused.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PayloadError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise PayloadError(f"{what} {value!r} is not a finite number (JSON has no NaN/Infinity)")
    return number


def recipe_data(recipe: Any) -> dict[str, Any]:
    """The ``recipe_data`` object of a snapshot, from a ``recipes`` row."""
    return {
        "name": recipe.name,
        "category": recipe.category,
        "source": recipe.source,
        "yield_quantity": None
        if recipe.yield_quantity is None
        else _number(recipe.yield_quantity, "yield_quantity"),
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
        "quantity": _number(line.quantity, f"the quantity of ingredient {line.ingredient_id}"),
        "unit": line.unit,
        "notes": line.notes,
    }


def column_capacity(conn: Connection) -> dict[str, ColumnCapacity]:
    """What ``recipe_snapshots.recipe_data``/``ingredients_data`` hold on this database.

    Read from the catalog (the column may not be the models' TEXT): MariaDB's TEXT holds
    65,535 bytes, PostgreSQL's text 1 GB; SQLite stores any length (its own limit, 1e9 bytes
    by default, is far beyond a recipe), so it is not checked there.
    """
    backend = conn.dialect.name
    if backend == "sqlite":
        return {}
    schema = "DATABASE()" if backend in ("mysql", "mariadb") else "current_schema()"
    rows = conn.execute(
        text(
            "SELECT column_name, character_maximum_length, character_octet_length "
            "FROM information_schema.columns "
            f"WHERE table_schema = {schema} AND table_name = :table "
            "AND column_name IN :columns"
        ).bindparams(bindparam("columns", expanding=True)),
        {"table": recipe_snapshots.name, "columns": list(PAYLOAD_COLUMNS)},
    ).all()
    return {
        str(name).lower(): ColumnCapacity(
            None if chars is None else int(chars), None if octets is None else int(octets)
        )
        for name, chars, octets in rows
    }


def check_capacity(column: str, value: str, capacity: Optional[ColumnCapacity]) -> None:
    """Raise PayloadError if ``value`` does not fit ``column`` (characters, UTF-8 bytes)."""
    if capacity is None:
        return
    if capacity.max_chars is not None and len(value) > capacity.max_chars:
        raise PayloadError(
            f"its {column} is {len(value)} characters of JSON, more than the "
            f"{capacity.max_chars} its column holds"
        )
    if capacity.max_bytes is not None and len(value) > capacity.max_bytes // 4:
        size = len(value.encode("utf-8"))
        if size > capacity.max_bytes:
            raise PayloadError(
                f"its {column} is {size} bytes of JSON, more than the {capacity.max_bytes} "
                "bytes its column holds"
            )


def build_payloads(
    conn: Connection,
    recipe_ids: Iterable[int],
    capacity: Optional[Mapping[str, ColumnCapacity]] = None,
) -> PayloadBuild:
    """Build the payload of each existing recipe in ``recipe_ids`` with two queries.

    A recipe whose data has no strict-JSON form (a quantity that is not a finite number) or
    whose JSON does not fit its column (``capacity``, from ``column_capacity``) goes to
    ``failures`` with the reason, instead of stopping the others.
    """
    wanted: Sequence[int] = sorted(set(recipe_ids))
    build = PayloadBuild()
    if not wanted:
        return build
    recipe_rows = conn.execute(
        select(recipes.c.id, *(recipes.c[name] for name in RECIPE_DATA_COLUMNS)).where(
            recipes.c.id.in_(wanted)
        )
    ).all()
    lines: dict[int, list[dict[str, Any]]] = {row.id: [] for row in recipe_rows}
    failures = build.failures
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
        if line.recipe_id in lines and line.recipe_id not in failures:
            try:
                lines[line.recipe_id].append(ingredient_data(line))
            except PayloadError as exc:
                failures[line.recipe_id] = str(exc)
    limits = capacity or {}
    for row in recipe_rows:
        if row.id in failures:
            continue
        try:
            # The application's serialiser, byte for byte, but strict: allow_nan=False.
            payload = SnapshotPayload(
                json.dumps(recipe_data(row), allow_nan=False),
                json.dumps(lines[row.id], allow_nan=False),
            )
            check_capacity("recipe_data", payload.recipe_data, limits.get("recipe_data"))
            check_capacity(
                "ingredients_data", payload.ingredients_data, limits.get("ingredients_data")
            )
        except (ValueError, TypeError) as exc:  # PayloadError is a ValueError
            failures[row.id] = str(exc)
            continue
        build.payloads[row.id] = payload
    return build


def create_payload_table(conn: Connection) -> None:
    """Create the (empty) temporary payload table on ``conn``, replacing a stale one.

    A pooled connection may still hold the table of an earlier run that stopped half-way
    (``drop_all`` checks first, as it does by default).
    """
    _payload_metadata.drop_all(conn)
    _payload_metadata.create_all(conn)


def drop_payload_table(conn: Connection) -> None:
    """Drop the temporary payload table of ``conn`` (closing the connection drops it too)."""
    _payload_metadata.drop_all(conn)


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
