"""Named database states, buildable on every backend, and what the backfill must do with each.

Each ``build_<state>(engine) -> StateInfo`` fills an empty database (its own, fresh: see
``backends.py``) and returns the state's expectations, declared by the builder from what it
created (never computed by the migrator's code). Builders are plain functions: no pytest, so a
script or a REPL can build a state too::

    info = build_state("deleted_recipe", engine)
    info.orphaned          # run ids whose recipe row is gone: skipped, reported, no snapshot
    info.to_migrate        # run ids that must get a new backfilled snapshot
    info.to_link_existing  # run id -> id of the snapshot row that exists for it (dangling)
    info.already_linked    # run ids linked before the backfill: never touched

================== ============================================================================
state              what it holds
================== ============================================================================
empty              our six tables, no rows
from_sample_data   ``test_data/sample_data.json`` loaded by ``sample_data.load_sample``
deleted_recipe     recipes deleted under existing runs with foreign-key enforcement off (SQLite
                   ``foreign_keys=OFF``, PostgreSQL ``session_replication_role = replica``,
                   MariaDB ``FOREIGN_KEY_CHECKS=0``); their lines and finished units stay
partially_migrated linked runs (the application's snapshots and an earlier backfill's),
                   unlinked runs, snapshot rows whose run is still unlinked, a few orphans,
                   archived/variant/ingredient-less recipes and a missing ingredient
already_migrated   every run whose recipe exists is linked; a run writes nothing
large              thousands of runs of every kind, written with Core bulk inserts
real_schema        SQLite only: the application's full 33-table schema
                   (``../shared/spec/bake_tracker_schema.sql``, WAL mode), the six tables
                   filled like partially_migrated plus rows in events, production_records and
                   production_consumptions, so a fingerprint covers tables beyond ours
================== ============================================================================

One more state holds the schema of before the snapshot feature, so the backfill refuses it until
``upgrade-schema`` has run; it is not in ``STATE_NAMES`` (the invariant suites run the backfill
on every state there) but in ``PRE_SNAPSHOT_STATE_NAMES``, and ``build_state`` builds it too:

=================== ===========================================================================
pre_snapshot_schema our six tables as they were before the snapshot feature (no
                    ``recipe_snapshots``, no snapshot-era columns), with history: recipes with
                    ingredients (one archived, one without ingredients, one whose ingredient was
                    deleted), runs of each interleaved by id, two recipes deleted under their
                    runs with foreign-key enforcement off; every run is unlinked
=================== ===========================================================================

Every builder checks its declaration against an independent reading of the database
(``observe``): a builder that declared something it did not build fails at once, with both.

The second half of this module holds the invariant checks shared by ``test_invariants.py`` and
``test_property.py``; each raises AssertionError saying which state, backend and run ids, and
what was expected and found.

The last part holds what the upgrade tests share (``test_schema_upgrade.py``,
``test_pre_snapshot_state.py``): the schema reflected comparably, the reference schema the
models create, and an ``on_step`` hook that interrupts an upgrade between two steps.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import sqlalchemy as sa
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from snapshot_backfill import backfill
from snapshot_backfill.backfill import (
    MAX_PROBLEMS_LISTED,
    Plan,
    Progress,
    RollbackReport,
    RunReport,
    VerifyReport,
)
from snapshot_backfill.journal import JOURNAL_TABLE_NAME
from snapshot_backfill.models import (
    Base,
    YieldMode,
    finished_units,
    ingredients,
    pre_snapshot_metadata,
    production_runs,
    recipe_ingredients,
    recipe_snapshots,
    recipes,
)
from snapshot_backfill.schema_upgrade import UpgradeStep
from snapshot_backfill.testing import factories as f
from snapshot_backfill.testing.appschema import APP_SCHEMA
from snapshot_backfill.testing.fingerprint import Fingerprint, changed_rows, explain

SMALL_BATCH = 7  # a prime smaller than every state: batches end at odd places
LARGE_RUNS = 2000
LARGE_BATCH = 250
# created_at/updated_at of rows the Core builders write: fixed, so two builds are equal.
BUILT_AT = datetime(2025, 7, 1, 12, 0, 0)


class StateUnavailable(Exception):
    """The state cannot be built here (e.g. the real schema on a server); ``str`` says why."""


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
        link = production_runs.c.recipe_snapshot_id if snapshot_schema else sa.null()
        runs = conn.execute(
            select(
                production_runs.c.id,
                production_runs.c.recipe_id,
                link.label("recipe_snapshot_id"),
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
    linked, link, migrate, orphans = [], {}, [], []
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


def _confirmed(engine: Engine, declared: StateInfo) -> StateInfo:
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


def _create_schema(engine: Engine) -> None:
    Base.metadata.create_all(engine)


# --- the states ----------------------------------------------------------------------------


def build_empty(engine: Engine) -> StateInfo:
    """Our six tables and no rows: every command has nothing to do."""
    _create_schema(engine)
    return _confirmed(engine, StateInfo("empty", description="no rows"))


def build_from_sample_data(engine: Engine) -> StateInfo:
    """Load ``test_data/sample_data.json`` with the project's loader (schema included).

    The expectations come from the sample's own declaration (``ExpectedCounts``: what its
    extension key says is linked, deleted, left unlinked), checked against the database.
    """
    from snapshot_backfill.sample_data import load_sample

    report = load_sample(engine)
    found = observe(engine, "from_sample_data", description="test_data/sample_data.json")
    expected = report.expected
    assert expected is not None, "load_sample reported no expected counts"
    declared = {
        "total_runs": expected.total_runs,
        "already_linked": expected.already_linked,
        "to_link_existing": expected.link_existing,
        "to_migrate": expected.to_migrate,
        "orphaned": expected.orphaned,
        "orphaned run ids": sorted(report.orphaned_run_ids),
        "linked runs (by ref)": sorted(report.run_ids[r] for r in expected.already_linked_refs),
        "dangling runs (by ref)": sorted(report.run_ids[r] for r in expected.link_existing_refs),
    }
    observed = {
        "total_runs": found.total_runs,
        "already_linked": len(found.already_linked),
        "to_link_existing": len(found.to_link_existing),
        "to_migrate": len(found.to_migrate),
        "orphaned": len(found.orphaned),
        "orphaned run ids": sorted(found.orphaned),
        "linked runs (by ref)": sorted(
            r
            for r in found.already_linked
            if r in {report.run_ids[x] for x in expected.already_linked_refs}
        ),
        "dangling runs (by ref)": sorted(
            r
            for r in found.to_link_existing
            if r in {report.run_ids[x] for x in expected.link_existing_refs}
        ),
    }
    if declared != observed:
        raise AssertionError(
            explain(
                "state 'from_sample_data': the loaded database is not what the sample declares",
                {
                    k: f"declared {declared[k]}, found {observed[k]}"
                    for k in declared
                    if declared[k] != observed[k]
                },
            )
        )
    return found


def build_deleted_recipe(engine: Engine) -> StateInfo:
    """Runs of recipes that were deleted with foreign keys off, among runs of live recipes.

    Two deleted recipes: one with four plain runs (orphans), one with a run the application
    had linked (stays linked) and a run with a snapshot row but no link (linked to it, not
    orphaned). Live recipes, one archived, have runs to migrate, interleaved by id.
    """
    _create_schema(engine)
    with f.factory_session(engine, seed=1001):
        live = f.RecipeFactory()
        archived = f.RecipeFactory(archived=True)
        gone = f.RecipeFactory()
        gone_linked = f.RecipeFactory()
        migrate, orphans, linked, dangling = [], [], [], {}
        for i in range(4):
            migrate.append(f.ProductionRunFactory(recipe=live).id)
            orphans.append(f.ProductionRunFactory(recipe=gone, orphaned=True).id)
            if i < 2:
                migrate.append(f.ProductionRunFactory(recipe=archived).id)
        linked.append(f.ProductionRunFactory(recipe=gone_linked, linked=True).id)
        run = f.ProductionRunFactory(recipe=gone_linked, with_dangling_snapshot=True)
        dangling[run.id] = _snapshot_id_of(run.id)
        migrate.append(f.ProductionRunFactory(recipe=live).id)
        f.schedule_deletion("recipes", gone_linked.id)
    return _confirmed(
        engine,
        StateInfo(
            "deleted_recipe",
            already_linked=tuple(linked),
            to_link_existing=dangling,
            to_migrate=tuple(sorted(migrate)),
            orphaned=tuple(orphans),
            run_recipe=_run_recipes(engine),
            recipe_ids=frozenset({live.id, archived.id}),
            snapshot_ids=tuple(sorted([*dangling.values(), *_snapshot_ids(engine, linked)])),
            description="recipes deleted with foreign keys off under existing runs",
        ),
    )


def _populate_mixed(engine: Engine, seed: int) -> dict[str, Any]:
    """The partially-migrated mix, through the factories; returns the ids by kind."""
    kinds: dict[str, Any] = {"linked": [], "migrate": [], "orphans": [], "dangling": {}}
    with f.factory_session(engine, seed=seed) as session:
        plain = f.RecipeFactory()
        variant = f.RecipeFactory(variant=True)
        bare = f.RecipeFactory(without_ingredients=True)
        missing = f.RecipeFactory(with_missing_ingredient=True)
        archived = f.RecipeFactory(archived=True)
        gone = f.RecipeFactory()
        live = [plain, variant, bare, missing, archived]
        # Kinds interleaved by run id, so that every batch of 7 mixes them, and batches of 7
        # end on an orphan (unlinked run 7), a dangling snapshot (14) and an orphan (21): the
        # runs a batch boundary bug would walk twice or skip. (Thirty kinds read as a sentence.)
        pattern = (  # noqa: SIM905
            "migrate linked migrate dangling orphan migrate migrate backfilled orphan "
            "dangling-backfilled migrate migrate linked migrate migrate migrate linked dangling "
            "migrate migrate migrate migrate migrate migrate backfilled orphan migrate migrate "
            "linked dangling"
        ).split()
        for i, kind in enumerate(pattern):
            recipe = gone if kind == "orphan" else live[i % 5]
            if kind == "migrate":
                kinds["migrate"].append(f.ProductionRunFactory(recipe=recipe).id)
            elif kind == "orphan":
                kinds["orphans"].append(f.ProductionRunFactory(recipe=recipe, orphaned=True).id)
            elif kind in ("linked", "backfilled"):
                run = f.ProductionRunFactory(
                    recipe=recipe, linked=kind == "linked", backfilled=kind == "backfilled"
                )
                kinds["linked"].append(run.id)
            else:
                run = f.ProductionRunFactory(recipe=recipe)
                f.RecipeSnapshotFactory(
                    run=run, dangling=True, backfilled=kind == "dangling-backfilled"
                )
                kinds["dangling"][run.id] = _snapshot_id_of(run.id)
        session.flush()
    return kinds


def build_partially_migrated(engine: Engine) -> StateInfo:
    """A database an earlier, interrupted backfill and the application have both written to."""
    _create_schema(engine)
    return _mixed_state(engine, "partially_migrated", seed=2002)


def _mixed_state(engine: Engine, name: str, seed: int) -> StateInfo:
    kinds = _populate_mixed(engine, seed)
    return _confirmed(
        engine,
        StateInfo(
            name,
            already_linked=tuple(sorted(kinds["linked"])),
            to_link_existing=kinds["dangling"],
            to_migrate=tuple(sorted(kinds["migrate"])),
            orphaned=tuple(sorted(kinds["orphans"])),
            run_recipe=_run_recipes(engine),
            recipe_ids=_recipe_ids(engine),
            snapshot_ids=tuple(
                sorted([*kinds["dangling"].values(), *_snapshot_ids(engine, kinds["linked"])])
            ),
            description="linked, unlinked, dangling snapshots, orphans",
        ),
    )


def build_already_migrated(engine: Engine) -> StateInfo:
    """Every run whose recipe exists is linked (by the application or a backfill); one orphan."""
    _create_schema(engine)
    with f.factory_session(engine, seed=3003):
        linked = [
            *(r.id for r in f.ProductionRunFactory.create_batch(6, linked=True)),
            *(r.id for r in f.ProductionRunFactory.create_batch(5, backfilled=True)),
        ]
        orphan = f.ProductionRunFactory(orphaned=True).id
    return _confirmed(
        engine,
        StateInfo(
            "already_migrated",
            already_linked=tuple(sorted(linked)),
            orphaned=(orphan,),
            run_recipe=_run_recipes(engine),
            recipe_ids=_recipe_ids(engine),
            snapshot_ids=_snapshot_ids(engine, linked),
            description="nothing left to do",
        ),
    )


def build_large(engine: Engine, *, runs: int = LARGE_RUNS, seed: int = 4004) -> StateInfo:
    """Thousands of runs of every kind, written with Core bulk inserts."""
    _create_schema(engine)
    blueprint = random_blueprint(random.Random(seed), runs=runs)
    return build_blueprint(engine, blueprint, "large", batch_size=LARGE_BATCH)


def build_real_schema(engine: Engine) -> StateInfo:
    """The application's full schema (SQLite, WAL), filled like partially_migrated, and more.

    Raises StateUnavailable off SQLite, or when ``../shared/spec`` is absent.
    """
    if engine.dialect.name != "sqlite":
        raise StateUnavailable("the application's full schema is SQLite DDL (SQLite only)")
    if not APP_SCHEMA.is_file():
        raise StateUnavailable(
            f"{APP_SCHEMA} is absent: the application's schema lives in ../shared/spec"
        )
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        # One transaction: 33 tables and 197 indexes, not 230 commits.
        raw.executescript(f"BEGIN;\n{APP_SCHEMA.read_text()}\nCOMMIT;")
        # As the application opens it (persistent in the file).
        raw.execute("PRAGMA journal_mode = WAL")
    info = _mixed_state(engine, "real_schema", seed=5005)
    _add_application_rows(engine, info)
    return info


def _add_application_rows(engine: Engine, info: StateInfo) -> None:
    """Rows in tables beyond our six: events (some runs belong to one), records, consumptions."""
    meta = sa.MetaData()
    with engine.begin() as conn:
        events = sa.Table("events", meta, autoload_with=conn)
        records = sa.Table("production_records", meta, autoload_with=conn)
        consumptions = sa.Table("production_consumptions", meta, autoload_with=conn)
        common = {"created_at": BUILT_AT, "updated_at": BUILT_AT}
        conn.execute(
            insert(events),
            [
                {
                    "id": i,
                    "name": name,
                    "event_date": day.date(),
                    "year": day.year,
                    "notes": None,
                    "date_added": day,
                    "last_modified": day,
                    "uuid": f"00000000-0000-4000-8000-e{i:011d}",
                    **common,
                }
                for i, (name, day) in enumerate(
                    [
                        ("Holiday Bake Sale", datetime(2024, 12, 14)),
                        ("Spring Fair", datetime(2025, 4, 5)),
                    ],
                    start=1,
                )
            ],
        )
        some_runs = sorted(info.run_recipe)[::3]
        for n, run_id in enumerate(some_runs):
            conn.execute(
                update(production_runs)
                .where(production_runs.c.id == run_id)
                .values(event_id=1 + n % 2)
            )
        conn.execute(
            insert(consumptions),
            [
                {
                    "production_run_id": run_id,
                    "ingredient_slug": slug,
                    "quantity_consumed": Decimal("1.250"),
                    "unit": "cup",
                    "total_cost": Decimal("0.8700"),
                    "uuid": f"00000000-0000-4000-8000-c{run_id:06d}{k:05d}",
                    **common,
                }
                for run_id in some_runs
                for k, slug in enumerate(("all_purpose_flour", "unsalted_butter"))
            ],
        )
        present = sorted(info.recipe_ids)
        conn.execute(
            insert(records),
            [
                {
                    "event_id": 1,
                    "recipe_id": recipe_id,
                    "batches": 2,
                    "actual_cost": Decimal("12.5000"),
                    "produced_at": datetime(2024, 12, 13, 9),
                    "notes": "for the sale",
                    "uuid": f"00000000-0000-4000-8000-r{recipe_id:011d}",
                    **common,
                }
                for recipe_id in present[:3]
            ],
        )


def _snapshot_id_of(run_id: int) -> int:
    from snapshot_backfill.models import RecipeSnapshot

    session = f.current_session()
    session.flush()
    snap = session.execute(
        select(RecipeSnapshot.id).where(RecipeSnapshot.production_run_id == run_id)
    ).scalar_one()
    return int(snap)


def _run_recipes(engine: Engine) -> dict[int, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(production_runs.c.id, production_runs.c.recipe_id)).all()
        conn.rollback()
    return {r.id: r.recipe_id for r in rows}


def _recipe_ids(engine: Engine) -> frozenset[int]:
    with engine.connect() as conn:
        ids = frozenset(conn.execute(select(recipes.c.id)).scalars())
        conn.rollback()
    return ids


def _snapshot_ids(engine: Engine, run_ids: Iterable[int]) -> tuple[int, ...]:
    wanted = list(run_ids)
    if not wanted:
        return ()
    with engine.connect() as conn:
        ids = (
            conn.execute(
                select(recipe_snapshots.c.id).where(
                    recipe_snapshots.c.production_run_id.in_(wanted)
                )
            )
            .scalars()
            .all()
        )
        conn.rollback()
    return tuple(sorted(ids))


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
    line_rows = []
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
        for r in recipe_rows:
            if r["base_recipe_id"] is not None:
                conn.execute(
                    update(recipes)
                    .where(recipes.c.id == r["id"])
                    .values(base_recipe_id=r["base_recipe_id"])
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
    return _confirmed(engine, bp.expectations(name, batch_size))


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


def create_pre_snapshot_schema(engine: Engine) -> sa.MetaData:
    """Create our six tables as they were before the snapshot feature; return their metadata."""
    metadata = pre_snapshot_metadata()
    metadata.create_all(engine)
    return metadata


def build_pre_snapshot_schema(engine: Engine) -> StateInfo:
    """The schema of before the snapshot feature, with history; see ``pre_snapshot_blueprint``.

    Its expectations are what the backfill must do once ``upgrade-schema`` has run: migrate the
    runs of live recipes, skip the runs of the two deleted ones.
    """
    metadata = create_pre_snapshot_schema(engine)
    info = build_blueprint(engine, pre_snapshot_blueprint(), PRE_SNAPSHOT_SCHEMA, metadata=metadata)
    return replace(
        info,
        description="the schema of before the snapshot feature: recipes, runs, deleted recipes",
    )


# --- the registry --------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[Engine], StateInfo]] = {
    "empty": build_empty,
    "from_sample_data": build_from_sample_data,
    "deleted_recipe": build_deleted_recipe,
    "partially_migrated": build_partially_migrated,
    "already_migrated": build_already_migrated,
    "large": build_large,
    "real_schema": build_real_schema,
}
STATE_NAMES = tuple(BUILDERS)
# Seconds per test on a server (thousands of runs): marked ``slow`` (deselect: -m "not slow").
SLOW_STATES = ("large",)
# The states as pytest parameters, the slow ones marked (still in every default run).
STATE_PARAMS = [
    pytest.param(name, id=name, marks=[pytest.mark.slow] if name in SLOW_STATES else [])
    for name in STATE_NAMES
]
# States the backfill refuses until upgrade-schema has run: kept out of STATE_NAMES.
PRE_SNAPSHOT_BUILDERS: dict[str, Callable[[Engine], StateInfo]] = {
    PRE_SNAPSHOT_SCHEMA: build_pre_snapshot_schema,
}
PRE_SNAPSHOT_STATE_NAMES = tuple(PRE_SNAPSHOT_BUILDERS)


def build_state(name: str, engine: Engine) -> StateInfo:
    """Build the named state into ``engine``'s empty database; see the tables above."""
    builders = {**BUILDERS, **PRE_SNAPSHOT_BUILDERS}
    try:
        builder = builders[name]
    except KeyError:
        raise ValueError(f"no state {name!r}; the states are: {', '.join(builders)}") from None
    return builder(engine)


# === running the migrator in tests =========================================================

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


# === invariant checks ======================================================================


def _fail(title: str, where: Mapping[str, Any], **details: Any) -> None:
    raise AssertionError(explain(title, {**where, **details}))


def check_plan(plan: Plan, info: StateInfo, where: Mapping[str, Any]) -> None:
    """The plan counts exactly the declared runs, per kind and per recipe."""
    found = {
        "total_runs": plan.total_runs,
        "already_linked": plan.already_linked,
        "to_migrate": plan.to_migrate,
        "to_link_existing": plan.to_link_existing,
        "orphaned_run_ids": list(plan.orphaned_run_ids),
    }
    expected = info.expected_plan()
    if found != expected:
        _fail(
            "the plan does not count what the state holds",
            where,
            **{
                k: f"expected {expected[k]}, planned {found[k]}"
                for k in expected
                if expected[k] != found[k]
            },
        )
    per_recipe = {
        r.recipe_id: {
            "recipe_exists": r.recipe_name is not None,
            "total_runs": r.total_runs,
            "already_linked": r.already_linked,
            "to_migrate": r.to_migrate,
            "to_link_existing": r.to_link_existing,
            "orphaned": r.orphaned,
        }
        for r in plan.per_recipe
    }
    expected_per_recipe = info.expected_per_recipe()
    if per_recipe != expected_per_recipe:
        wrong = sorted(
            set(per_recipe) ^ set(expected_per_recipe)
            | {k for k in per_recipe if per_recipe.get(k) != expected_per_recipe.get(k)}
        )
        _fail(
            "the plan's per-recipe breakdown is wrong",
            where,
            **{
                f"recipe {k}": f"expected {expected_per_recipe.get(k)}, planned {per_recipe.get(k)}"
                for k in wrong[:10]
            },
        )


def check_run_report(report: RunReport, info: StateInfo, where: Mapping[str, Any]) -> None:
    """A complete run reports what the state declares, and no errors."""
    found = (
        report.migrated,
        report.linked_existing,
        report.skipped_orphans,
        report.errors,
        report.interrupted,
    )
    expected = (len(info.to_migrate), len(info.to_link_existing), len(info.orphaned), [], False)
    if found != expected:
        _fail(
            "the run's report does not match the state",
            where,
            expected="migrated, linked_existing, skipped_orphans, errors, interrupted = "
            f"{expected}",
            reported=f"{found}",
        )
    if report.batches != info.batches:
        _fail(
            "the run did not take the expected number of batches",
            where,
            unlinked_runs=len(info.unlinked),
            batch_size=info.batch_size,
            expected=info.batches,
            reported=report.batches,
        )


def _key(run_or_snapshot_id: int) -> tuple[str]:
    return (repr(int(run_or_snapshot_id)),)


def check_writes(
    before: Fingerprint, after: Fingerprint, info: StateInfo, where: Mapping[str, Any]
) -> None:
    """A run writes exactly this and nothing else (raw fingerprints before and after).

    A new snapshot row for each run to migrate and for no other; the runs it links changed in
    ``recipe_snapshot_id`` and ``updated_at`` only; every other table (the application's too)
    untouched but for the journal table the migrator adds.
    """
    for name in sorted(set(before.tables) | set(after.tables)):
        if name in ("production_runs", "recipe_snapshots", JOURNAL_TABLE_NAME):
            continue
        if before.tables.get(name) != after.tables.get(name):
            _fail(
                f"the run changed table {name}, which it must not touch",
                where,
                differences=before.diff(after),
            )
    snaps = changed_rows(before, after, "recipe_snapshots")
    after_snapshots = after.tables["recipe_snapshots"]
    run_column = after_snapshots.columns.index("production_run_id")
    snapshot_rows = after_snapshots.keyed()
    new_snapshot_runs = sorted(int(snapshot_rows[k][run_column]) for k in snaps["added"])
    if snaps["changed"] or snaps["removed"] or new_snapshot_runs != sorted(info.to_migrate):
        _fail(
            "the run must add one snapshot per run to migrate and change no other snapshot",
            where,
            runs_to_migrate=sorted(info.to_migrate),
            runs_given_a_new_snapshot=new_snapshot_runs,
            snapshots_changed=sorted(k[0] for k in snaps["changed"]),
            snapshots_removed=sorted(k[0] for k in snaps["removed"]),
        )
    runs = changed_rows(before, after, "production_runs")
    changed = sorted(int(k[0]) for k in runs["changed"])
    if runs["added"] or runs["removed"] or changed != list(info.work):
        _fail(
            "the run must link exactly the runs to migrate and to link",
            where,
            expected_linked=list(info.work),
            changed=changed,
            orphans_changed=sorted(set(changed) & set(info.orphaned)),
            already_linked_changed=sorted(set(changed) & set(info.already_linked)),
        )
    table = before.tables["production_runs"]
    rows_before, rows_after = table.keyed(), after.tables["production_runs"].keyed()
    allowed = {"recipe_snapshot_id", "updated_at"}
    for k in sorted(runs["changed"]):
        b = dict(zip(table.columns, rows_before[k]))
        a = dict(zip(after.tables["production_runs"].columns, rows_after[k]))
        bad = {c: f"{b[c]} -> {a[c]}" for c in b if b[c] != a[c] and c not in allowed}
        if bad:
            _fail(f"the run changed more than the link of run {k[0]}", where, **bad)
    journal = after.row_count(JOURNAL_TABLE_NAME)
    if info.work and journal != len(info.work):
        _fail(
            "the journal must hold one entry per link the run made",
            where,
            expected=len(info.work),
            journal_rows=journal,
        )


def expected_payload(engine: Engine, recipe_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The recipe_data and ingredients_data a backfilled snapshot of ``recipe_id`` must hold.

    Straight from ``../shared/spec/schema.md``: the recipe's current row; one object per
    recipe_ingredients row in id order (the application's relationship order), "Unknown" and
    "" for an ingredient row that is missing.
    """
    with engine.connect() as conn:
        r = conn.execute(select(recipes).where(recipes.c.id == recipe_id)).one()
        lines = conn.execute(
            select(recipe_ingredients, ingredients.c.display_name, ingredients.c.slug)
            .select_from(
                recipe_ingredients.outerjoin(
                    ingredients, ingredients.c.id == recipe_ingredients.c.ingredient_id
                )
            )
            .where(recipe_ingredients.c.recipe_id == recipe_id)
            .order_by(recipe_ingredients.c.id)
        ).all()
        conn.rollback()
    recipe_data = {
        "name": r.name,
        "category": r.category,
        "source": r.source,
        "yield_quantity": r.yield_quantity,
        "yield_unit": r.yield_unit,
        "yield_description": r.yield_description,
        "estimated_time_minutes": r.estimated_time_minutes,
        "notes": r.notes,
        "variant_name": r.variant_name,
        "is_production_ready": bool(r.is_production_ready),
    }
    ingredients_data = [
        {
            "ingredient_id": line.ingredient_id,
            "ingredient_name": line.display_name if line.display_name is not None else "Unknown",
            "ingredient_slug": (line.slug or "") if line.display_name is not None else "",
            "quantity": float(line.quantity),
            "unit": line.unit,
            "notes": line.notes,
        }
        for line in lines
    ]
    return recipe_data, ingredients_data


def check_backfilled_content(engine: Engine, info: StateInfo, where: Mapping[str, Any]) -> None:
    """Each run to migrate has one new snapshot: flagged, dated, the recipe's current data."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                recipe_snapshots,
                production_runs.c.produced_at,
                production_runs.c.recipe_snapshot_id.label("run_link"),
                production_runs.c.recipe_id.label("run_recipe"),
            )
            .select_from(
                recipe_snapshots.join(
                    production_runs, production_runs.c.id == recipe_snapshots.c.production_run_id
                )
            )
            .where(recipe_snapshots.c.id.not_in(info.snapshot_ids or [-1]))
            .order_by(recipe_snapshots.c.production_run_id)
        ).all()
        conn.rollback()
    payloads: dict[int, Any] = {}
    for s in rows:
        run = s.production_run_id
        problems = {}
        if s.is_backfilled is not True:
            problems["is_backfilled"] = f"{s.is_backfilled!r}, expected True"
        if s.scale_factor != 1.0:
            problems["scale_factor"] = f"{s.scale_factor!r}, expected 1.0"
        if s.snapshot_date != s.produced_at:
            problems["snapshot_date"] = f"{s.snapshot_date}, expected produced_at {s.produced_at}"
        if s.run_link != s.id:
            problems["link"] = f"run {run} links {s.run_link}, expected snapshot {s.id}"
        if s.recipe_id != s.run_recipe or s.recipe_id not in info.recipe_ids:
            problems["recipe_id"] = (
                f"{s.recipe_id}, expected the run's recipe {s.run_recipe} (which must exist)"
            )
        else:
            if s.recipe_id not in payloads:
                payloads[s.recipe_id] = expected_payload(engine, s.recipe_id)
            want_recipe, want_lines = payloads[s.recipe_id]
            got_recipe, got_lines = _loads(s.recipe_data), _loads(s.ingredients_data)
            if got_recipe != want_recipe:
                problems["recipe_data"] = _dict_diff(want_recipe, got_recipe)
            if got_lines != want_lines:
                problems["ingredients_data"] = f"expected {want_lines}\nfound {got_lines}"
        if problems:
            _fail(f"backfilled snapshot {s.id} of run {run} is wrong", where, **problems)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        return f"<not JSON: {exc}: {text!r}>"


def _dict_diff(want: Mapping[str, Any], got: Any) -> str:
    if not isinstance(got, Mapping):
        return f"expected {want}, found {got!r}"
    keys = sorted(set(want) | set(got))
    return "; ".join(
        f"{k}: expected {want.get(k, '<absent>')!r}, found {got.get(k, '<absent>')!r}"
        for k in keys
        if want.get(k, "<absent>") != got.get(k, "<absent>")
    )


def check_links_after_run(engine: Engine, info: StateInfo, where: Mapping[str, Any]) -> None:
    """After a run: each run to link points at its existing snapshot; orphans stay unlinked."""
    with engine.connect() as conn:
        link = dict(
            conn.execute(select(production_runs.c.id, production_runs.c.recipe_snapshot_id)).all()
        )
        snapshot_runs = set(conn.execute(select(recipe_snapshots.c.production_run_id)).scalars())
        snapshot_recipes = set(conn.execute(select(recipe_snapshots.c.recipe_id)).scalars())
        conn.rollback()
    wrong = {
        run: (snap, link.get(run))
        for run, snap in info.to_link_existing.items()
        if link.get(run) != snap
    }
    if wrong:
        _fail(
            "runs with an existing snapshot must be linked to it (not to a new one)",
            where,
            **{f"run {r}": f"expected snapshot {s}, linked to {g}" for r, (s, g) in wrong.items()},
        )
    linked_orphans = [r for r in info.orphaned if link.get(r) is not None]
    given = [r for r in info.orphaned if r in snapshot_runs]
    if linked_orphans or given:
        _fail(
            "orphaned runs must never get a snapshot",
            where,
            orphaned_runs=list(info.orphaned),
            linked=linked_orphans,
            with_a_snapshot_row=given,
        )
    preexisting_recipes = _preexisting_snapshot_recipes(engine, info)
    invented = sorted(snapshot_recipes - set(info.recipe_ids) - preexisting_recipes)
    if invented:
        _fail("snapshots of recipes that do not exist were created", where, recipe_ids=invented)


def _preexisting_snapshot_recipes(engine: Engine, info: StateInfo) -> set[int]:
    if not info.snapshot_ids:
        return set()
    with engine.connect() as conn:
        ids = set(
            conn.execute(
                select(recipe_snapshots.c.recipe_id).where(
                    recipe_snapshots.c.id.in_(info.snapshot_ids)
                )
            ).scalars()
        )
        conn.rollback()
    return ids


def check_verify(
    report: VerifyReport,
    info: StateInfo,
    where: Mapping[str, Any],
    *,
    after_run: bool,
    snapshots: Optional[int] = None,
) -> None:
    """Before a run verify flags exactly the runs a run would link; after, nothing."""
    expected_problems = () if after_run else info.verify_problems_before
    flagged = tuple(sorted(p.run_id for p in report.problems if p.run_id is not None))
    listed = min(len(expected_problems), MAX_PROBLEMS_LISTED)  # verify lists the first ones
    if (
        report.problems_total != len(expected_problems)
        or len(flagged) != listed
        or not set(flagged) <= set(expected_problems)
    ):
        _fail(
            f"verify {'after' if after_run else 'before'} the run is wrong",
            where,
            expected_problem_runs=list(expected_problems),
            flagged_runs=list(flagged),
            problems="\n".join(f"{p.kind}: {p.detail}" for p in report.problems[:20]) or "none",
        )
    if report.ok != (not expected_problems):
        _fail("verify's ok disagrees with its problems", where, ok=report.ok)
    if list(report.orphaned_run_ids) != sorted(info.orphaned):
        _fail(
            "verify must report exactly the orphaned runs",
            where,
            expected=sorted(info.orphaned),
            reported=list(report.orphaned_run_ids),
        )
    if report.runs_checked != info.total_runs:
        _fail(
            "verify did not check every run",
            where,
            expected=info.total_runs,
            checked=report.runs_checked,
        )
    if snapshots is not None and report.snapshots_checked != snapshots:
        _fail(
            "verify did not check every snapshot",
            where,
            expected=snapshots,
            checked=report.snapshots_checked,
        )


def check_rollback_report(
    report: RollbackReport, info: StateInfo, where: Mapping[str, Any]
) -> None:
    """Rolling back one complete run undoes every link it made and deletes what it created."""
    found = (
        report.journal_entries,
        report.runs_unlinked,
        report.snapshots_deleted,
        report.left_alone,
    )
    expected = (len(info.work), len(info.work), len(info.to_migrate), 0)
    if found != expected:
        _fail(
            "the rollback report does not match the run it undid",
            where,
            expected=f"journal_entries, runs_unlinked, snapshots_deleted, left_alone = {expected}",
            reported=f"{found}",
        )


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


def sqlite_files(path: Path) -> dict[str, bytes]:
    """A SQLite database's file and its side files (journal, WAL, shared memory), as bytes."""
    out = {}
    for suffix in ("", "-journal", "-wal", "-shm"):
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            out[candidate.name] = candidate.read_bytes()
    return out


# === upgrading the schema of before the snapshot feature ===================================

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
