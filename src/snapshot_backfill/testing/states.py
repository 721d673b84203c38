"""Named database states, buildable on every backend, and what the backfill must do with each.

Each ``build_<state>(engine) -> StateInfo`` fills an empty database (its own, fresh: see
``backends``) and returns the state's expectations, declared by the builder from what it
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
(``expectations.observe``): a builder that declared something it did not build fails at once,
with both. What the backfill must then do is checked by ``invariants``; generated histories
(the large state, the pre-snapshot one, the property tests) come from ``blueprint``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from snapshot_backfill.models import (
    Base,
    pre_snapshot_metadata,
    production_runs,
    recipe_snapshots,
    recipes,
)
from snapshot_backfill.testing import factories as f
from snapshot_backfill.testing.appschema import APP_SCHEMA, missing
from snapshot_backfill.testing.blueprint import (
    BUILT_AT,
    PRE_SNAPSHOT_SCHEMA,
    build_blueprint,
    pre_snapshot_blueprint,
    random_blueprint,
)
from snapshot_backfill.testing.expectations import StateInfo, confirmed, observe
from snapshot_backfill.testing.fingerprint import explain

LARGE_RUNS = 2000
LARGE_BATCH = 250


class StateUnavailable(Exception):
    """The state cannot be built here (e.g. the real schema on a server); ``str`` says why."""


def _create_schema(engine: Engine) -> None:
    Base.metadata.create_all(engine)


# --- the states ----------------------------------------------------------------------------


def build_empty(engine: Engine) -> StateInfo:
    """Our six tables and no rows: every command has nothing to do."""
    _create_schema(engine)
    return confirmed(engine, StateInfo("empty", description="no rows"))


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
    counts = ("total_runs", "already_linked", "link_existing", "to_migrate", "orphaned")
    declared = {
        **{k: getattr(expected, k) for k in counts},
        "orphaned run ids": sorted(report.orphaned_run_ids),
        "linked runs (by ref)": sorted(report.run_ids[r] for r in expected.already_linked_refs),
        "dangling runs (by ref)": sorted(report.run_ids[r] for r in expected.link_existing_refs),
    }
    observed = {
        **{k: getattr(found.counts(), k) for k in counts},
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
    return confirmed(
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
    return confirmed(
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
    return confirmed(
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
        raise StateUnavailable(missing(APP_SCHEMA))
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
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
