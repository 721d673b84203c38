"""What a database state declares, and an independent reading of any database.

``StateInfo`` says what the backfill must do with a database: which runs are linked, which to
link to an existing snapshot, which to migrate, which are orphaned. A state's builder declares
it from what it created; ``observe(engine)`` reads it from any database with plain queries,
independently of the migrator's code (so it also works on a user's database);
``confirmed(engine, declared)`` checks a declaration against that reading.

No test-only dependency: the migrator's commands may use this on a user's database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.engine import Engine

from snapshot_backfill.models import (
    ingredients,
    production_runs,
    recipe_ingredients,
    recipe_snapshots,
    recipes,
)
from snapshot_backfill.sample_data import ExpectedCounts
from snapshot_backfill.testing.fingerprint import explain

SMALL_BATCH = 7  # a prime smaller than every state: batches end at odd places


@dataclass(frozen=True)
class StateInfo:
    """A built state and what the backfill must do with it.

    Every production run is in exactly one of ``already_linked``, ``to_link_existing`` (run id
    -> its existing, unlinked snapshot), ``to_migrate`` and ``orphaned``. ``run_recipe`` maps
    every run to its recipe id and ``recipe_ids`` lists the recipes that exist.
    ``snapshot_ids`` are the snapshots present before the backfill (the application's, an
    earlier backfill's): the backfill must never change one. ``batch_size`` is the size the
    tests use on it.
    """

    name: str
    already_linked: tuple[int, ...] = ()
    to_link_existing: Mapping[int, int] = field(default_factory=dict)
    to_migrate: tuple[int, ...] = ()
    orphaned: tuple[int, ...] = ()
    run_recipe: Mapping[int, int] = field(default_factory=dict)
    recipe_ids: frozenset[int] = frozenset()
    snapshot_ids: tuple[int, ...] = ()
    batch_size: int = SMALL_BATCH
    description: str = ""

    @property
    def total_runs(self) -> int:
        return len(self.run_recipe)

    @property
    def work(self) -> tuple[int, ...]:
        """The runs a backfill links: to new snapshots and to existing ones, by id."""
        return tuple(sorted((*self.to_migrate, *self.to_link_existing)))

    @property
    def unlinked(self) -> tuple[int, ...]:
        """Every run without a link before the backfill (what its batches walk through)."""
        return tuple(sorted((*self.work, *self.orphaned)))

    @property
    def dangling_snapshot_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self.to_link_existing.values()))

    @property
    def batches(self) -> int:
        """How many batches a run takes at ``batch_size`` (it walks every unlinked run)."""
        return -(-len(self.unlinked) // self.batch_size) if self.work else 0

    @property
    def verify_problems_before(self) -> tuple[int, ...]:
        """The runs ``verify`` must flag before the backfill: every run a run would link."""
        return self.work

    def counts(self) -> ExpectedCounts:
        """The state's counts, in the type every generator of data declares them with."""
        return ExpectedCounts(
            total_runs=self.total_runs,
            already_linked=len(self.already_linked),
            link_existing=len(self.to_link_existing),
            to_migrate=len(self.to_migrate),
            orphaned=len(self.orphaned),
        )

    def expected_plan(self) -> dict[str, Any]:
        """The plan's counts, as ``Plan`` names them."""
        return {
            "total_runs": self.total_runs,
            "already_linked": len(self.already_linked),
            "to_migrate": len(self.to_migrate),
            "to_link_existing": len(self.to_link_existing),
            "orphaned_run_ids": sorted(self.orphaned),
        }

    def expected_per_recipe(self) -> dict[int, dict[str, Any]]:
        """Per recipe id: its name's presence and the four counts of its runs."""
        out: dict[int, dict[str, Any]] = {}
        kinds = {r: "already_linked" for r in self.already_linked}
        kinds.update({r: "to_link_existing" for r in self.to_link_existing})
        kinds.update({r: "to_migrate" for r in self.to_migrate})
        kinds.update({r: "orphaned" for r in self.orphaned})
        for run, recipe in self.run_recipe.items():
            row = out.setdefault(
                recipe,
                {
                    "recipe_exists": recipe in self.recipe_ids,
                    "total_runs": 0,
                    "already_linked": 0,
                    "to_migrate": 0,
                    "to_link_existing": 0,
                    "orphaned": 0,
                },
            )
            row["total_runs"] += 1
            row[kinds[run]] += 1
        return out

    def summary(self) -> str:
        return (
            f"{self.total_runs} runs: {len(self.already_linked)} linked, "
            f"{len(self.to_migrate)} to migrate, {len(self.to_link_existing)} to link to an "
            f"existing snapshot, {len(self.orphaned)} orphaned; {len(self.snapshot_ids)} "
            f"snapshots before; batch size {self.batch_size}"
        )


# --- reading a database independently of the migrator -------------------------------------


def observe(engine: Engine, name: str = "observed", **extra: Any) -> StateInfo:
    """Classify every run of the database in plain Python, from the raw rows.

    The order follows the migrator's documented classification: linked; else a snapshot row
    exists for it (link it); else its recipe exists (migrate); else orphaned. A database of
    before the snapshot feature (no ``recipe_snapshots`` table) has no links and no snapshots.
    """
    with engine.connect() as conn:
        snapshot_schema = sa.inspect(conn).has_table(recipe_snapshots.name)
        link_column = production_runs.c.recipe_snapshot_id if snapshot_schema else sa.null()
        runs = conn.execute(
            select(
                production_runs.c.id,
                production_runs.c.recipe_id,
                link_column.label("recipe_snapshot_id"),
            )
        ).all()
        recipe_ids = frozenset(conn.execute(select(recipes.c.id)).scalars())
        snaps = (
            conn.execute(select(recipe_snapshots.c.id, recipe_snapshots.c.production_run_id)).all()
            if snapshot_schema
            else []
        )
        conn.rollback()
    snapshot_of = {s.production_run_id: s.id for s in snaps}
    linked: list[int] = []
    link: dict[int, int] = {}
    migrate: list[int] = []
    orphans: list[int] = []
    for r in runs:
        if r.recipe_snapshot_id is not None:
            linked.append(r.id)
        elif r.id in snapshot_of:
            link[r.id] = snapshot_of[r.id]
        elif r.recipe_id in recipe_ids:
            migrate.append(r.id)
        else:
            orphans.append(r.id)
    return StateInfo(
        name=name,
        already_linked=tuple(sorted(linked)),
        to_link_existing=dict(sorted(link.items())),
        to_migrate=tuple(sorted(migrate)),
        orphaned=tuple(sorted(orphans)),
        run_recipe={r.id: r.recipe_id for r in runs},
        recipe_ids=recipe_ids,
        snapshot_ids=tuple(sorted(s.id for s in snaps)),
        **extra,
    )


def confirmed(engine: Engine, declared: StateInfo) -> StateInfo:
    """Return ``declared`` if the database holds what it says; else fail with both readings."""
    found = observe(engine, declared.name)
    fields = (
        "already_linked",
        "to_link_existing",
        "to_migrate",
        "orphaned",
        "run_recipe",
        "recipe_ids",
        "snapshot_ids",
    )
    wrong = [n for n in fields if _norm(getattr(declared, n)) != _norm(getattr(found, n))]
    if wrong:
        raise AssertionError(
            explain(
                f"state {declared.name!r}: the builder declared what it did not build",
                {
                    n: f"declared {_norm(getattr(declared, n))}, found {_norm(getattr(found, n))}"
                    for n in wrong
                },
            )
        )
    return declared


def _norm(value: Any) -> Any:
    if isinstance(value, Mapping):
        return sorted(value.items())
    if isinstance(value, (set, frozenset, tuple, list)):
        return sorted(value)
    return value


def historical_cases(engine: Engine) -> dict[str, list[int]]:
    """The production cases of ``../shared/spec/schema.md`` present in a database, by run id.

    For checking that a state really exercises what it claims (a trait that silently did
    nothing would otherwise go unnoticed): each case maps to the runs that show it.
    """
    info = observe(engine)
    with engine.connect() as conn:
        recipe_rows = conn.execute(
            select(recipes.c.id, recipes.c.is_archived, recipes.c.base_recipe_id)
        ).all()
        lines = conn.execute(
            select(
                recipe_ingredients.c.recipe_id, ingredients.c.id.label("ingredient")
            ).select_from(
                recipe_ingredients.outerjoin(
                    ingredients, ingredients.c.id == recipe_ingredients.c.ingredient_id
                )
            )
        ).all()
        backfilled = set(
            conn.execute(
                select(recipe_snapshots.c.production_run_id).where(
                    recipe_snapshots.c.is_backfilled == True
                )
            ).scalars()
        )
        conn.rollback()
    with_lines = {line.recipe_id for line in lines}
    missing = {line.recipe_id for line in lines if line.ingredient is None}

    def migrating(recipe_ids: Iterable[int]) -> list[int]:
        wanted = set(recipe_ids)
        return [r for r in info.to_migrate if info.run_recipe[r] in wanted]

    return {
        "orphaned run (recipe deleted)": list(info.orphaned),
        "run linked to the application's snapshot": [
            r for r in info.already_linked if r not in backfilled
        ],
        "run linked to an earlier backfill's snapshot": [
            r for r in info.already_linked if r in backfilled
        ],
        "snapshot row for an unlinked run (dangling)": list(info.to_link_existing),
        "run of an archived recipe": migrating(r.id for r in recipe_rows if r.is_archived),
        "run of a variant": migrating(r.id for r in recipe_rows if r.base_recipe_id is not None),
        "run of a recipe without ingredients": migrating(
            r.id for r in recipe_rows if r.id not in with_lines
        ),
        "run of a recipe with a missing ingredient": migrating(missing),
    }


def describe(info: StateInfo, backend: str) -> dict[str, Any]:
    """The context block every failure message starts with."""
    return {"state": info.name, "backend": backend, "holds": info.summary()}
