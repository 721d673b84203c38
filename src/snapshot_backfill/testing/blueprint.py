"""Generated histories: a whole database as plain data, written with Core bulk inserts.

A ``Blueprint`` lists ingredients, recipes (with their lines) and runs, each run of a kind
(unlinked, linked to the application's snapshot or an earlier backfill's, or with a dangling
snapshot row), and the recipes and ingredients deleted with foreign keys off.
``Blueprint.expectations`` derives what the backfill must do from the declared kinds alone;
``build_blueprint`` writes it and checks the database against that declaration. The large state,
the schema of before the snapshot feature and the Hypothesis strategies produce blueprints.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy import insert, update
from sqlalchemy.engine import Engine

from snapshot_backfill.models import (
    Base,
    YieldMode,
    finished_units,
    ingredients,
    production_runs,
    recipe_ingredients,
    recipe_snapshots,
    recipes,
)
from snapshot_backfill.testing import factories as f
from snapshot_backfill.testing.expectations import SMALL_BATCH, StateInfo, confirmed

# created_at/updated_at of rows the Core builders write: fixed, so two builds are equal.
BUILT_AT = datetime(2025, 7, 1, 12, 0, 0)


# --- blueprints: states as plain data, written with Core bulk inserts ----------------------

LINKED_APP = "linked"  # linked to a snapshot the application wrote
LINKED_BACKFILLED = "backfilled"  # linked to a snapshot an earlier backfill wrote
DANGLING = "dangling"  # a snapshot row exists, the run is unlinked
UNLINKED = "unlinked"  # no snapshot (to migrate, or an orphan if its recipe is deleted)
RUN_KINDS = (UNLINKED, LINKED_APP, LINKED_BACKFILLED, DANGLING)


@dataclass
class RecipeSpec:
    """A recipe of a blueprint; ``lines`` are (ingredient id, quantity, unit, notes)."""

    id: int
    name: str
    archived: bool = False
    base_recipe_id: Optional[int] = None
    variant_name: Optional[str] = None
    production_ready: bool = False
    yield_quantity: float = 24.0
    notes: Optional[str] = None
    lines: list[tuple[int, float, str, Optional[str]]] = field(default_factory=list)


@dataclass
class RunSpec:
    """A production run of a blueprint: its recipe, when, and its snapshot situation."""

    id: int
    recipe_id: int
    produced_at: datetime
    kind: str = UNLINKED


@dataclass
class Blueprint:
    """A whole database as data: the Hypothesis strategies and the large state produce these."""

    ingredient_ids: list[int] = field(default_factory=list)
    recipes: list[RecipeSpec] = field(default_factory=list)
    runs: list[RunSpec] = field(default_factory=list)
    deleted_recipe_ids: set[int] = field(default_factory=set)
    deleted_ingredient_ids: set[int] = field(default_factory=set)

    def expectations(self, name: str, batch_size: int) -> StateInfo:
        """What the backfill must do, derived from the declared kinds alone."""
        present = {r.id for r in self.recipes} - self.deleted_recipe_ids
        by_kind: dict[str, list[int]] = {"linked": [], "migrate": [], "orphan": []}
        dangling: dict[int, int] = {}
        snapshot_ids: list[int] = []
        for run in self.runs:
            if run.kind in (LINKED_APP, LINKED_BACKFILLED):
                by_kind["linked"].append(run.id)
                snapshot_ids.append(snapshot_id_for(run.id))
            elif run.kind == DANGLING:
                dangling[run.id] = snapshot_id_for(run.id)
                snapshot_ids.append(snapshot_id_for(run.id))
            elif run.recipe_id in present:
                by_kind["migrate"].append(run.id)
            else:
                by_kind["orphan"].append(run.id)
        return StateInfo(
            name,
            already_linked=tuple(sorted(by_kind["linked"])),
            to_link_existing=dict(sorted(dangling.items())),
            to_migrate=tuple(sorted(by_kind["migrate"])),
            orphaned=tuple(sorted(by_kind["orphan"])),
            run_recipe={r.id: r.recipe_id for r in self.runs},
            recipe_ids=frozenset(present),
            snapshot_ids=tuple(sorted(snapshot_ids)),
            batch_size=batch_size,
            description=f"blueprint: {len(self.recipes)} recipes, {len(self.runs)} runs",
        )


def snapshot_id_for(run_id: int) -> int:
    """Blueprint snapshots are numbered after their run (ids far from the migrator's)."""
    return 100_000 + run_id


def random_blueprint(rng: random.Random, *, runs: int) -> Blueprint:
    """A realistic large history: ~60 recipes, runs of every kind, a few deleted rows."""
    bp = Blueprint(ingredient_ids=list(range(1, 121)))
    for rid in range(1, 61):
        lines = [
            (ing, rng.choice(f.QUANTITIES), rng.choice(f.UNITS), rng.choice(f.LINE_NOTES))
            for ing in rng.sample(bp.ingredient_ids, rng.randint(0, 6))
        ]
        bp.recipes.append(
            RecipeSpec(
                id=rid,
                name=f"{rng.choice(f.BAKES)} #{rid}",
                archived=rng.random() < 0.1,
                base_recipe_id=rid - 1 if rid > 1 and rng.random() < 0.15 else None,
                variant_name="Holiday" if rid % 7 == 0 else None,
                production_ready=rng.random() < 0.5,
                yield_quantity=rng.choice((1.0, 12.0, 24.0, 2.5)),
                notes=rng.choice((None, "Crème au beurre", 'a "quoted" note')),
                lines=lines,
            )
        )
    bp.deleted_recipe_ids = {7, 19, 33, 48}
    bp.deleted_ingredient_ids = {5, 64, 99}
    start = datetime(2022, 1, 1)
    for run_id in range(1, runs + 1):
        roll = rng.random()
        kind = (
            LINKED_APP
            if roll < 0.15
            else LINKED_BACKFILLED
            if roll < 0.20
            else DANGLING
            if roll < 0.24
            else UNLINKED
        )
        bp.runs.append(
            RunSpec(
                id=run_id,
                recipe_id=rng.randint(1, 60),
                produced_at=start + timedelta(minutes=run_id * 517, microseconds=run_id),
                kind=kind,
            )
        )
    return bp


def build_blueprint(
    engine: Engine,
    bp: Blueprint,
    name: str,
    *,
    batch_size: int = SMALL_BATCH,
    metadata: sa.MetaData = Base.metadata,
) -> StateInfo:
    """Write ``bp`` into a database that has our (empty) tables, then delete with FKs off.

    ``metadata`` names the tables the database has: ``pre_snapshot_metadata()`` for one of
    before the snapshot feature, which takes only blueprints without snapshots and variants.
    """
    _require_schema_for(bp, metadata)
    common = {"created_at": BUILT_AT, "updated_at": BUILT_AT}

    def uuid(kind: int, n: int) -> str:
        return f"00000000-0000-4000-{8000 + kind:04x}-{n:012d}"

    ingredient_rows = [
        {
            "id": i,
            "display_name": f"Ingredient {i:04d}",
            "slug": f"ingredient_{i:04d}",
            "hierarchy_level": 2,
            "category": "Pantry",
            "is_packaging": False,
            "date_added": BUILT_AT,
            "last_modified": BUILT_AT,
            "uuid": uuid(1, i),
            **common,
        }
        for i in bp.ingredient_ids
    ]
    recipe_rows = [
        {
            "id": r.id,
            "name": r.name,
            "category": "Cookies",
            "source": None,
            "yield_quantity": r.yield_quantity,
            "yield_unit": "cookies",
            "yield_description": None,
            "estimated_time_minutes": 30 + r.id % 90,
            "notes": r.notes,
            "is_archived": r.archived,
            "base_recipe_id": r.base_recipe_id,
            "variant_name": r.variant_name,
            "is_production_ready": r.production_ready,
            "date_added": BUILT_AT,
            "last_modified": BUILT_AT,
            "uuid": uuid(2, r.id),
            **common,
        }
        for r in bp.recipes
    ]
    line_rows: list[dict[str, Any]] = []
    for r in bp.recipes:
        for ingredient_id, quantity, unit, notes in r.lines:
            n = len(line_rows) + 1
            line_rows.append(
                {
                    "id": n,
                    "recipe_id": r.id,
                    "ingredient_id": ingredient_id,
                    "quantity": quantity,
                    "unit": unit,
                    "notes": notes,
                    "uuid": uuid(3, n),
                    **common,
                }
            )
    unit_rows = [
        {
            "id": r.id,
            "slug": f"unit_{r.id}",
            "display_name": f"{r.name} (cookies)",
            "recipe_id": r.id,
            "yield_mode": YieldMode.DISCRETE_COUNT,
            "items_per_batch": 24,
            "unit_cost": Decimal("0.2500"),
            "inventory_count": 0,
            "uuid": uuid(4, r.id),
            **common,
        }
        for r in bp.recipes
    ]
    run_rows = [
        {
            "id": run.id,
            "recipe_id": run.recipe_id,
            "finished_unit_id": run.recipe_id,
            "event_id": None,
            "recipe_snapshot_id": None,
            "num_batches": 1 + run.id % 4,
            "expected_yield": 24,
            "actual_yield": 23,
            "produced_at": run.produced_at,
            "notes": None,
            "production_status": "complete",
            "loss_quantity": 1,
            "total_ingredient_cost": Decimal("7.5000"),
            "per_unit_cost": Decimal("0.3125"),
            "uuid": uuid(5, run.id),
            **common,
        }
        for run in bp.runs
    ]
    snapshot_rows = [
        {
            "id": snapshot_id_for(run.id),
            "recipe_id": run.recipe_id,
            "production_run_id": run.id,
            "scale_factor": 1.0 if run.kind == LINKED_BACKFILLED else 2.0,
            "snapshot_date": run.produced_at
            if run.kind == LINKED_BACKFILLED
            else run.produced_at + timedelta(minutes=5),
            "recipe_data": json.dumps({"name": f"as baked, run {run.id}"}),
            "ingredients_data": "[]",
            "is_backfilled": run.kind == LINKED_BACKFILLED,
            "uuid": uuid(6, run.id),
            **common,
        }
        for run in bp.runs
        if run.kind != UNLINKED
    ]
    linked = [r.id for r in bp.runs if r.kind in (LINKED_APP, LINKED_BACKFILLED)]
    with engine.begin() as conn:
        for table, rows in (
            (ingredients, ingredient_rows),
            (recipes, [dict(r, base_recipe_id=None) for r in recipe_rows]),
            (recipe_ingredients, line_rows),
            (finished_units, unit_rows),
            (production_runs, run_rows),
            (recipe_snapshots, snapshot_rows),
        ):
            if rows:
                target = metadata.tables[table.name]
                conn.execute(insert(target), _only_columns_of(target, rows))
        for row in recipe_rows:
            if row["base_recipe_id"] is not None:
                conn.execute(
                    update(recipes)
                    .where(recipes.c.id == row["id"])
                    .values(base_recipe_id=row["base_recipe_id"])
                )
        if linked:
            conn.execute(
                update(production_runs)
                .where(production_runs.c.id.in_(linked))
                .values(recipe_snapshot_id=production_runs.c.id + 100_000)
            )
        _advance_sequences(conn, metadata)
    deletions = {"recipes": bp.deleted_recipe_ids, "ingredients": bp.deleted_ingredient_ids}
    if any(deletions.values()):
        f.delete_with_foreign_keys_off(engine, deletions)
    return confirmed(engine, bp.expectations(name, batch_size))


def _require_schema_for(bp: Blueprint, metadata: sa.MetaData) -> None:
    """Refuse a blueprint that needs snapshot-era tables or columns ``metadata`` lacks."""
    if recipe_snapshots.name not in metadata.tables and any(r.kind != UNLINKED for r in bp.runs):
        raise ValueError("runs with snapshots need the recipe_snapshots table")
    snapshot_era_recipes = [
        r.id
        for r in bp.recipes
        if r.base_recipe_id is not None or r.variant_name is not None or r.production_ready
    ]
    if snapshot_era_recipes and "variant_name" not in metadata.tables[recipes.name].c:
        raise ValueError(
            f"recipes {snapshot_era_recipes} are variants or production-ready: the schema has "
            "no columns for that"
        )


def _only_columns_of(table: sa.Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows without the values of columns ``table`` lacks (a pre-snapshot table)."""
    names = set(table.c.keys())
    return [{k: v for k, v in row.items() if k in names} for row in rows]


def _advance_sequences(conn: sa.Connection, metadata: sa.MetaData) -> None:
    """After inserts with explicit ids, move PostgreSQL's sequences past them (as a restore does).

    SQLite and MariaDB do this by themselves.
    """
    if conn.dialect.name != "postgresql":
        return
    for table in metadata.sorted_tables:
        conn.exec_driver_sql(
            f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
            f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"
        )


# --- the schema of before the snapshot feature ---------------------------------------------

PRE_SNAPSHOT_SCHEMA = "pre_snapshot_schema"
PRE_SNAPSHOT_RUNS = 60
# id, name, archived, ingredient ids of its lines: recipe 8 has none; ingredient 5 of recipe 1
# is deleted (a missing ingredient); recipes 2 and 6 are deleted under their runs.
PRE_SNAPSHOT_RECIPES: tuple[tuple[int, str, bool, tuple[int, ...]], ...] = (
    (1, "Shortbread", False, (1, 3, 5)),
    (2, "Gingerbread Men", False, (1, 4, 6, 12)),
    (3, "Old Fruitcake", True, (1, 2, 7)),
    (4, "Lemon Bars", False, (1, 3, 8)),
    (5, "Banana Bread", False, (2, 9, 10)),
    (6, "Pfeffernüsse", False, (1, 4, 11)),
    (7, "Sourdough Loaf", False, (2, 10)),
    (8, "Peppermint Bark", False, ()),
)
PRE_SNAPSHOT_DELETED_RECIPES = frozenset({2, 6})
PRE_SNAPSHOT_DELETED_INGREDIENTS = frozenset({5})


def pre_snapshot_blueprint(seed: int = 6006) -> Blueprint:
    """Years of history recorded before snapshots existed: no run is linked, none can be.

    Runs go round the recipes in a fixed order (three apart), so runs of deleted recipes sit
    between runs of live ones and every batch of ``SMALL_BATCH`` mixes them.
    """
    rng = random.Random(seed)
    bp = Blueprint(ingredient_ids=list(range(1, 13)))
    for recipe_id, name, archived, ingredient_ids in PRE_SNAPSHOT_RECIPES:
        bp.recipes.append(
            RecipeSpec(
                id=recipe_id,
                name=name,
                archived=archived,
                yield_quantity=rng.choice((1.0, 12.0, 24.0, 2.5)),
                notes=rng.choice((None, "Crème au beurre", 'a "quoted" note')),
                lines=[
                    (ing, rng.choice(f.QUANTITIES), rng.choice(f.UNITS), rng.choice(f.LINE_NOTES))
                    for ing in ingredient_ids
                ],
            )
        )
    start = datetime(2022, 3, 1, 7, 30)
    between_runs = timedelta(days=11, minutes=7, microseconds=1)
    recipe_count = len(PRE_SNAPSHOT_RECIPES)
    bp.runs = [
        RunSpec(
            id=run_id,
            recipe_id=1 + (run_id * 3) % recipe_count,
            produced_at=start + run_id * between_runs,
        )
        for run_id in range(1, PRE_SNAPSHOT_RUNS + 1)
    ]
    bp.deleted_recipe_ids = set(PRE_SNAPSHOT_DELETED_RECIPES)
    bp.deleted_ingredient_ids = set(PRE_SNAPSHOT_DELETED_INGREDIENTS)
    return bp
