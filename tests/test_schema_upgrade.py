"""upgrade-schema: a pre-snapshot database brought to the snapshot schema, on every backend.

Each test names the database state it starts from and the invariant it checks: the dry run
changes nothing, the result reflects like ``create_all`` (or like the application's own
post-snapshot DDL), rows survive, a second run does nothing, an interrupted run completes.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Engine
from sqlalchemy.schema import CreateTable

from snapshot_backfill.backup import backup_sqlite
from snapshot_backfill.database import open_engine
from snapshot_backfill.errors import LockedError, SchemaMissingError
from snapshot_backfill.models import Base, YieldMode
from snapshot_backfill.schema_upgrade import (
    REBUILD_PREFIX,
    SchemaGap,
    SchemaUpgradeError,
    UpgradeStep,
    _definition_name,
    _is_table_constraint,
    describe_gaps,
    find_missing,
    missing_schema_message,
    plan_upgrade,
    require_snapshot_schema,
    split_table_definitions,
    upgrade_schema,
)
from snapshot_backfill.testing.appschema import APP_PRE_SNAPSHOT_SCHEMA, APP_SCHEMA, require
from snapshot_backfill.testing.backends import MARIADB, POSTGRESQL, Backend, provision, skip_reason
from snapshot_backfill.testing.schema_images import (
    MODEL_TABLES,
    Interrupted,
    assert_same_schema,
    create_snapshot_schema,
    interrupt_at,
    schema_fingerprint,
    upgraded_schema_fingerprint,
)
from snapshot_backfill.testing.states import create_pre_snapshot_schema

SNAPSHOT_TABLES = ("recipes", "production_runs", "recipe_snapshots")
T0 = datetime(2024, 1, 1, 9, 30)
_SQLITE = sqlite_dialect.dialect()

EXPECTED_GAPS = {
    "table recipe_snapshots",
    "column recipes.base_recipe_id",
    "column recipes.variant_name",
    "column recipes.is_production_ready",
    "index ix_recipes_base_recipe_id on recipes (base_recipe_id)",
    "index ix_recipes_is_production_ready on recipes (is_production_ready)",
    "foreign key recipes (base_recipe_id) -> recipes (id)",
    "column production_runs.recipe_snapshot_id",
    "index idx_production_run_snapshot on production_runs (recipe_snapshot_id)",
    "index ix_production_runs_recipe_snapshot_id on production_runs (recipe_snapshot_id)",
    "foreign key production_runs (recipe_snapshot_id) -> recipe_snapshots (id)",
}
# MariaDB cannot have it (see models.Recipe); SQLite and PostgreSQL must get it.
CHECK_GAP = "check constraint ck_recipe_no_self_variant on recipes"


# --- database states -------------------------------------------------------------------------


def seed_pre_snapshot_rows(engine: Engine, metadata: sa.MetaData) -> None:
    """Fill the pre-snapshot tables with a small, fixed bakery history."""
    common = {"created_at": T0, "updated_at": T0}
    t = metadata.tables
    with engine.begin() as conn:
        conn.execute(
            t["ingredients"].insert(),
            [
                {
                    "id": i,
                    "uuid": f"in-{i}",
                    "display_name": name,
                    "slug": slug,
                    "hierarchy_level": 2,
                    "category": "Baking",
                    "is_packaging": False,
                    "date_added": T0,
                    "last_modified": T0,
                    **common,
                }
                for i, name, slug in ((1, "Flour", "flour"), (2, "Butter", "butter"))
            ],
        )
        conn.execute(
            t["recipes"].insert(),
            [
                {
                    "id": i,
                    "uuid": f"re-{i}",
                    "name": name,
                    "category": "Cookies",
                    "source": None,
                    "yield_quantity": 24.0,
                    "yield_unit": "cookies",
                    "estimated_time_minutes": 45,
                    "notes": "note é",
                    "is_archived": archived,
                    "date_added": T0,
                    "last_modified": T0,
                    **common,
                }
                for i, name, archived in (
                    (1, "Shortbread", False),
                    (2, "Dough", False),
                    (3, "Old fruitcake", True),
                )
            ],
        )
        conn.execute(
            t["recipe_ingredients"].insert(),
            [
                {
                    "id": i,
                    "uuid": f"ri-{i}",
                    "recipe_id": recipe,
                    "ingredient_id": ingredient,
                    "quantity": quantity,
                    "unit": "cup",
                    **common,
                }
                for i, recipe, ingredient, quantity in (
                    (1, 1, 1, 2.5),
                    (2, 1, 2, 1.0),
                    (3, 2, 1, 3.0),
                )
            ],
        )
        conn.execute(
            t["finished_units"].insert(),
            [
                {
                    "id": i,
                    "uuid": f"fu-{i}",
                    "slug": slug,
                    "display_name": slug.title(),
                    "recipe_id": recipe,
                    "yield_mode": YieldMode.DISCRETE_COUNT,
                    "unit_cost": Decimal("0.2500"),
                    "inventory_count": 10,
                    **common,
                }
                for i, slug, recipe in ((1, "shortbread", 1), (2, "fruitcake", 3))
            ],
        )
        conn.execute(
            t["production_runs"].insert(),
            [
                {
                    "id": i,
                    "uuid": f"pr-{i}",
                    "recipe_id": recipe,
                    "finished_unit_id": unit,
                    "event_id": None,
                    "num_batches": 2,
                    "expected_yield": 48,
                    "actual_yield": 46,
                    "produced_at": datetime(2024, 12, i, 10),
                    "production_status": "complete",
                    "loss_quantity": 2,
                    "total_ingredient_cost": Decimal("12.5000"),
                    "per_unit_cost": Decimal("0.2700"),
                    **common,
                }
                for i, recipe, unit in ((1, 1, 1), (2, 1, 1), (3, 3, 2))
            ],
        )


def build_pre_snapshot(url: URL) -> None:
    """Create the six tables as they were before the snapshot feature, with rows."""
    with engine_at(url, create=True) as engine:
        seed_pre_snapshot_rows(engine, create_pre_snapshot_schema(engine))


def build_current(url: URL) -> None:
    """Create the six tables as the models define them today (the reference)."""
    with engine_at(url, create=True) as engine:
        create_snapshot_schema(engine)


REAL_SEED_SQL = """
INSERT INTO events (name, event_date, year, date_added, last_modified, id, uuid, created_at,
    updated_at) VALUES ('Christmas', '2024-12-24', 2024, :t, :t, 1, 'ev-1', :t, :t);
INSERT INTO ingredients (display_name, slug, hierarchy_level, category, is_packaging,
    date_added, last_modified, id, uuid, created_at, updated_at) VALUES
    ('Flour', 'flour', 2, 'Baking', 0, :t, :t, 1, 'in-1', :t, :t),
    ('Butter', 'butter', 2, 'Dairy', 0, :t, :t, 2, 'in-2', :t, :t);
INSERT INTO recipes (name, category, source, yield_quantity, yield_unit,
    estimated_time_minutes, notes, is_archived, date_added, last_modified, id, uuid,
    created_at, updated_at) VALUES
    ('Shortbread', 'Cookies', 'Grandma', 24, 'cookies', 45, 'classic', 0, :t, :t, 1, 're-1',
     :t, :t),
    ('Dough', 'Bases', NULL, 1, 'batch', NULL, NULL, 0, :t, :t, 2, 're-2', :t, :t),
    ('Old fruitcake', 'Cakes', NULL, 1, 'cake', NULL, NULL, 1, :t, :t, 3, 're-3', :t, :t);
INSERT INTO recipe_ingredients (recipe_id, ingredient_id, quantity, unit, notes, id, uuid,
    created_at, updated_at) VALUES
    (1, 1, 2.5, 'cup', NULL, 1, 'ri-1', :t, :t), (1, 2, 1, 'cup', 'soft', 2, 'ri-2', :t, :t),
    (2, 1, 3, 'cup', NULL, 3, 'ri-3', :t, :t);
INSERT INTO recipe_components (recipe_id, component_recipe_id, quantity, sort_order, id, uuid,
    created_at, updated_at) VALUES (1, 2, 1, 0, 1, 'rc-1', :t, :t);
INSERT INTO finished_units (slug, display_name, recipe_id, yield_mode, unit_cost,
    inventory_count, created_at, updated_at, id, uuid) VALUES
    ('shortbread', 'Shortbread', 1, 'DISCRETE_COUNT', 0.25, 10, :t, :t, 1, 'fu-1'),
    ('fruitcake', 'Fruitcake', 3, 'DISCRETE_COUNT', 5, 0, :t, :t, 2, 'fu-2');
INSERT INTO event_production_targets (event_id, recipe_id, target_batches, id, uuid,
    created_at, updated_at) VALUES (1, 1, 3, 1, 'ept-1', :t, :t);
INSERT INTO production_runs (recipe_id, finished_unit_id, event_id, num_batches,
    expected_yield, actual_yield, produced_at, notes, production_status, loss_quantity,
    total_ingredient_cost, per_unit_cost, id, uuid, created_at, updated_at) VALUES
    (1, 1, 1, 2, 48, 46, '2024-12-01 10:00:00.000000', 'first', 'complete', 2, 12.5, 0.27,
     1, 'pr-1', :t, :t),
    (1, 1, NULL, 1, 24, 24, '2024-12-02 10:00:00.000000', NULL, 'complete', 0, 6.25, 0.26,
     2, 'pr-2', :t, :t),
    (3, 2, NULL, 1, 1, 1, '2023-12-20 10:00:00.000000', NULL, 'complete', 0, 20, 20,
     3, 'pr-3', :t, :t);
INSERT INTO production_consumptions (production_run_id, ingredient_slug, quantity_consumed,
    unit, total_cost, id, uuid, created_at, updated_at) VALUES
    (1, 'flour', 5, 'cup', 2.5, 1, 'pc-1', :t, :t), (1, 'butter', 2, 'cup', 10, 2, 'pc-2', :t, :t),
    (2, 'flour', 2.5, 'cup', 1.25, 3, 'pc-3', :t, :t);
INSERT INTO production_losses (production_run_id, finished_unit_id, loss_category,
    loss_quantity, per_unit_cost, total_loss_cost, id, uuid, created_at, updated_at) VALUES
    (1, 1, 'burnt', 2, 0.27, 0.54, 1, 'pl-1', :t, :t);
"""


def build_from_ddl(path: Path, ddl: Path, *, journal_mode: str = "wal", seed: bool) -> None:
    """Create a SQLite file from the application's DDL, as the application configures it."""
    require(ddl)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA journal_mode = {journal_mode}")
        # Per connection, for speed: the upgrade under test opens its own, fully synchronous.
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.executescript(ddl.read_text())
        if seed:
            stamp = T0.isoformat(sep=" ", timespec="microseconds")
            conn.executescript(REAL_SEED_SQL.replace(":t", f"'{stamp}'"))
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


# --- helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def engine_at(url: URL, **options: Any) -> Iterator[Engine]:
    """Open an engine the way the tool does, and always dispose of it."""
    engine = open_engine(url, **options)
    try:
        yield engine
    finally:
        engine.dispose()


def sqlite_url(path: Path) -> URL:
    return URL.create("sqlite", database=str(path))


def table_rows(engine: Engine, columns: dict[str, list[str]]) -> dict[str, list[tuple[Any, ...]]]:
    """Read the given columns of each table as plain tuples, in a fully determined order."""
    rows = {}
    with engine.connect() as conn:
        quote = conn.dialect.identifier_preparer.quote
        for table, names in columns.items():
            order = ", ".join(str(n) for n in range(1, len(names) + 1))
            result = conn.exec_driver_sql(
                f"SELECT {', '.join(quote(n) for n in names)} FROM {quote(table)} ORDER BY {order}"
            )
            rows[table] = [tuple(row) for row in result]
    return rows


def column_names(engine: Engine) -> dict[str, list[str]]:
    """Every table's columns (to read the same columns again after the upgrade)."""
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        return {
            table: [c["name"] for c in inspector.get_columns(table)]
            for table in inspector.get_table_names()
        }


def sqlite_schema_rows(path: Path, *, excluding: Sequence[str]) -> list[tuple[Any, ...]]:
    """The stored schema (bar root pages) of every table not in ``excluding``."""
    marks = ", ".join("?" for _ in excluding)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            f"SELECT type, name, tbl_name, sql FROM sqlite_master WHERE tbl_name NOT IN ({marks}) "
            "ORDER BY type, name",
            tuple(excluding),
        ).fetchall()


def step_number(steps: Sequence[UpgradeStep], which: str) -> int:
    """Pick a step: ``first``, ``last``, or the first whose description starts with ``which``."""
    if which == "first":
        return steps[0].number
    if which == "last":
        return steps[-1].number
    return next(s.number for s in steps if s.description.startswith(which))


# --- SQLite: a database from our pre-snapshot models -----------------------------------------


@pytest.fixture
def pre_db(tmp_path: Path) -> Path:
    """A SQLite file with the six tables before the snapshot feature, and rows."""
    path = tmp_path / "pre.db"
    build_pre_snapshot(sqlite_url(path))
    return path


@pytest.fixture
def reference(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Reflection of a SQLite file the models' create_all made: what an upgrade must equal."""
    path = tmp_path / "reference.db"
    build_current(sqlite_url(path))
    with engine_at(sqlite_url(path)) as engine:
        return schema_fingerprint(engine, MODEL_TABLES)


def test_find_missing_names_every_snapshot_era_piece(pre_db: Path) -> None:
    with engine_at(sqlite_url(pre_db)) as engine:
        gaps = find_missing(engine)
    assert set(describe_gaps(gaps)) == EXPECTED_GAPS | {CHECK_GAP}
    assert len(gaps) == len(EXPECTED_GAPS) + 1


def test_dry_run_changes_no_byte_and_renders_the_script(pre_db: Path) -> None:
    before = pre_db.read_bytes()
    backups: list[int] = []
    with engine_at(sqlite_url(pre_db)) as engine:
        report = upgrade_schema(engine, dry_run=True, backup=lambda: backups.append(1))
    assert pre_db.read_bytes() == before
    assert report.dry_run and not report.already_current
    assert report.steps_executed == () and backups == []
    script = report.plan.sql_script()
    lines = script.splitlines()
    assert lines[1:3] == ["PRAGMA foreign_keys = OFF;", "BEGIN IMMEDIATE;"]
    assert lines[-3:] == ["PRAGMA foreign_key_check;", "COMMIT;", "PRAGMA foreign_keys = ON;"]
    for step in report.plan.steps:
        assert f"-- step {step.number}/{step.total}: {step.description}" in script
        for statement in step.statements:
            assert f"{statement};" in script
    assert "ALTER TABLE _snapshot_backfill_new_recipes RENAME TO recipes;" in script


def test_upgrade_equals_create_all_and_keeps_every_row(
    pre_db: Path, reference: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    backup_path = tmp_path / "pre.backup.db"

    def backup() -> Path:
        # Called before the upgrade takes its write lock: a backup may take it too.
        with contextlib.closing(sqlite3.connect(pre_db, timeout=0.1)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.rollback()
        return backup_sqlite(pre_db, backup_path)

    seen: list[int] = []
    with engine_at(sqlite_url(pre_db)) as engine:
        old_columns = column_names(engine)
        rows_before = table_rows(engine, old_columns)
        plan = plan_upgrade(engine)
        report = upgrade_schema(engine, on_step=lambda s: seen.append(s.number), backup=backup)

        assert_same_schema(schema_fingerprint(engine, MODEL_TABLES), reference, "sqlite")
        assert table_rows(engine, old_columns) == rows_before
        new_columns = {"recipes": ["id", "base_recipe_id", "variant_name", "is_production_ready"]}
        assert table_rows(engine, new_columns)["recipes"] == [
            (1, None, None, 0),
            (2, None, None, 0),
            (3, None, None, 0),
        ]
        with engine.connect() as conn:
            # The pooled connection the upgrade used is handed back with its keys on.
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA legacy_alter_table").scalar() == 0
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    assert [s.description for s in report.steps_executed] == [s.description for s in plan.steps]
    assert seen == list(range(1, len(plan.steps) + 1))
    assert {s.total for s in report.steps_executed} == {len(plan.steps)}
    assert report.foreign_key_violations_kept == 0
    # The backup is the database as it was before the upgrade.
    assert report.backup == backup_path
    with engine_at(sqlite_url(backup_path)) as engine:
        assert set(describe_gaps(find_missing(engine))) == EXPECTED_GAPS | {CHECK_GAP}
        assert table_rows(engine, old_columns) == rows_before


def test_second_upgrade_finds_nothing_to_do_and_writes_nothing(pre_db: Path) -> None:
    with engine_at(sqlite_url(pre_db)) as engine:
        upgrade_schema(engine)
    after_first = pre_db.read_bytes()
    backups: list[int] = []
    with engine_at(sqlite_url(pre_db)) as engine:
        assert find_missing(engine) == []
        report = upgrade_schema(engine, backup=lambda: backups.append(1))
    assert report.already_current and report.steps_executed == ()
    assert "nothing to do" in report.plan.sql_script()
    assert backups == []
    assert pre_db.read_bytes() == after_first


@pytest.mark.parametrize(
    "which", ["first", "rebuild table recipes", "rebuild table production_runs", "last"]
)
def test_interrupted_upgrade_changes_nothing_and_rerun_completes(
    pre_db: Path, reference: dict[str, dict[str, Any]], which: str
) -> None:
    with engine_at(sqlite_url(pre_db)) as engine:
        old_columns = column_names(engine)
        rows_before = table_rows(engine, old_columns)
        gaps_before = find_missing(engine)
        k = step_number(plan_upgrade(engine).steps, which)
        seen: list[int] = []
        with pytest.raises(Interrupted):
            upgrade_schema(engine, on_step=interrupt_at(k, seen))
        assert seen == list(range(1, k + 1))
        # One transaction: steps 1..k-1 ran and were rolled back with it.
        assert find_missing(engine) == gaps_before
        assert table_rows(engine, old_columns) == rows_before

        report = upgrade_schema(engine)
        assert not report.already_current
        assert_same_schema(schema_fingerprint(engine, MODEL_TABLES), reference, f"after {which}")
        assert table_rows(engine, old_columns) == rows_before
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_rebuild_keeps_views_triggers_and_statistics(pre_db: Path) -> None:
    with contextlib.closing(sqlite3.connect(pre_db, isolation_level=None)) as conn:
        conn.executescript(
            """
            CREATE VIEW recipe_names AS SELECT name FROM recipes WHERE NOT is_archived;
            CREATE TABLE run_log (run_id INTEGER, batches INTEGER);
            CREATE TRIGGER log_run AFTER UPDATE OF num_batches ON production_runs
            BEGIN INSERT INTO run_log VALUES (new.id, new.num_batches); END;
            ANALYZE;
            """
        )
    with engine_at(sqlite_url(pre_db)) as engine:
        upgrade_schema(engine)
        with engine.begin() as conn:
            names = conn.exec_driver_sql("SELECT name FROM recipe_names ORDER BY name").all()
            assert [n for (n,) in names] == ["Dough", "Shortbread"]
            conn.exec_driver_sql("UPDATE production_runs SET num_batches = 5 WHERE id = 2")
            assert conn.exec_driver_sql("SELECT * FROM run_log").all() == [(2, 5)]
            analyzed = conn.exec_driver_sql("SELECT DISTINCT tbl FROM sqlite_stat1").all()
            assert {"recipes", "production_runs"} <= {t for (t,) in analyzed}


def test_a_second_upgrade_while_one_runs_is_refused(pre_db: Path) -> None:
    refused: list[Exception] = []

    def start_another(step: UpgradeStep) -> None:
        if step.number == step.total:
            # No wait: the second upgrade finds the migration lock taken and gives up.
            other = sqlite_url(pre_db)
            with pytest.raises(LockedError) as caught, engine_at(other, busy_timeout=0.05) as e:
                upgrade_schema(e, lock_timeout=0)
            refused.append(caught.value)

    with engine_at(sqlite_url(pre_db)) as engine:
        report = upgrade_schema(engine, on_step=start_another)
        assert len(refused) == 1 and "another snapshot-backfill" in str(refused[0])
        assert len(report.steps_executed) == report.plan.steps[-1].total
        assert find_missing(engine) == []


def test_partial_state_with_a_leftover_default_is_completed(
    pre_db: Path, reference: dict[str, dict[str, Any]]
) -> None:
    # Columns someone already added by hand, at the end, one with a server default.
    with contextlib.closing(sqlite3.connect(pre_db, isolation_level=None)) as conn:
        conn.execute("ALTER TABLE recipes ADD COLUMN variant_name VARCHAR(100)")
        conn.execute(
            "ALTER TABLE recipes ADD COLUMN is_production_ready BOOLEAN NOT NULL DEFAULT 1"
        )
        conn.execute("UPDATE recipes SET variant_name = 'mini' WHERE id = 2")
    with engine_at(sqlite_url(pre_db)) as engine:
        described = set(describe_gaps(find_missing(engine)))
        assert "column recipes.variant_name" not in described
        assert (
            "server default left on recipes.is_production_ready (the models have none)" in described
        )
        upgrade_schema(engine)
        assert_same_schema(schema_fingerprint(engine, MODEL_TABLES), reference, "partial")
        values = table_rows(engine, {"recipes": ["id", "variant_name", "is_production_ready"]})
        # Values already there are the application's: kept, not overwritten with defaults.
        assert values["recipes"] == [(1, None, 1), (2, "mini", 1), (3, None, 1)]


def test_foreign_key_violations_already_there_are_kept_not_fatal(pre_db: Path) -> None:
    # A run whose recipe was deleted while foreign keys were off: the backfill's business.
    with contextlib.closing(sqlite3.connect(pre_db, isolation_level=None)) as conn:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("DELETE FROM recipe_ingredients WHERE recipe_id = 3")
        conn.execute("DELETE FROM recipes WHERE id = 3")
    with engine_at(sqlite_url(pre_db)) as engine:
        report = upgrade_schema(engine)
        assert report.foreign_key_violations_kept == 2  # run 3 and finished unit 2
        with engine.connect() as conn:
            violations = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
            assert Counter(v[0] for v in violations) == {"production_runs": 1, "finished_units": 1}
            assert conn.exec_driver_sql(
                "SELECT recipe_id FROM production_runs WHERE id = 3"
            ).all() == [(3,)]


def test_partial_recipe_snapshots_table_is_completed(
    pre_db: Path, reference: dict[str, dict[str, Any]]
) -> None:
    # recipe_snapshots made by hand: no UNIQUE on production_run_id, one index missing.
    ddl = str(CreateTable(Base.metadata.tables["recipe_snapshots"]).compile(dialect=_SQLITE))
    with contextlib.closing(sqlite3.connect(pre_db, isolation_level=None)) as conn:
        conn.execute(ddl.replace("UNIQUE (production_run_id), ", ""))
        conn.execute("CREATE INDEX idx_recipe_snapshot_recipe ON recipe_snapshots (recipe_id)")
    with engine_at(sqlite_url(pre_db)) as engine:
        described = set(describe_gaps(find_missing(engine)))
        assert "table recipe_snapshots" not in described
        assert "unique constraint on recipe_snapshots (production_run_id)" in described
        assert "index idx_recipe_snapshot_date on recipe_snapshots (snapshot_date)" in described
        upgrade_schema(engine)
        assert_same_schema(schema_fingerprint(engine, MODEL_TABLES), reference, "partial table")


def test_data_a_new_constraint_rejects_fails_the_upgrade_and_changes_nothing(pre_db: Path) -> None:
    # A hand-added base_recipe_id where recipe 2 names itself: the new CHECK refuses the copy.
    with contextlib.closing(sqlite3.connect(pre_db, isolation_level=None)) as conn:
        conn.execute("ALTER TABLE recipes ADD COLUMN base_recipe_id INTEGER")
        conn.execute("UPDATE recipes SET base_recipe_id = id WHERE id = 2")
    with engine_at(sqlite_url(pre_db)) as engine:
        gaps_before = find_missing(engine)
        with pytest.raises(SchemaUpgradeError) as caught:
            upgrade_schema(engine)
        message = str(caught.value)
        assert "(rebuild table recipes" in message and "CHECK constraint failed" in message
        assert "nothing was changed (rolled back)" in message
        assert find_missing(engine) == gaps_before
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_a_stray_rebuild_table_is_refused(pre_db: Path) -> None:
    with contextlib.closing(sqlite3.connect(pre_db, isolation_level=None)) as conn:
        conn.execute(f"CREATE TABLE {REBUILD_PREFIX}recipes (id INTEGER)")
    refused = pytest.raises(SchemaUpgradeError, match=f"table {REBUILD_PREFIX}recipes exists")
    with engine_at(sqlite_url(pre_db)) as engine, refused:
        plan_upgrade(engine)


def test_an_upgrade_finished_meanwhile_is_not_repeated(pre_db: Path) -> None:
    # Between the read-only plan and the write lock, someone else upgrades the database.
    def backup() -> str:
        with engine_at(sqlite_url(pre_db)) as other:
            upgrade_schema(other)
        return "backup-token"

    with engine_at(sqlite_url(pre_db)) as engine:
        report = upgrade_schema(engine, backup=backup)
        assert report.already_current and report.steps_executed == ()
        assert report.backup == "backup-token"
        assert find_missing(engine) == []


def test_a_database_without_recipes_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    before = path.read_bytes()
    with engine_at(sqlite_url(path)) as engine:
        with pytest.raises(SchemaMissingError, match="not a bake-tracker database") as caught:
            upgrade_schema(engine)
        assert caught.value.missing == ["table production_runs", "table recipes"]
        with pytest.raises(SchemaMissingError):
            plan_upgrade(engine)
    assert path.read_bytes() == before


def test_plan_and_run_can_name_the_gaps_and_the_command(pre_db: Path, tmp_path: Path) -> None:
    with engine_at(sqlite_url(pre_db)) as engine, pytest.raises(SchemaMissingError) as caught:
        require_snapshot_schema(engine, str(pre_db))
    message = str(caught.value)
    assert f"snapshot-backfill upgrade-schema --database-url {pre_db}" in message
    assert "table recipe_snapshots" in message and "column recipes.variant_name" in message
    assert set(caught.value.missing) == EXPECTED_GAPS | {CHECK_GAP}

    current = tmp_path / "current.db"
    build_current(sqlite_url(current))
    with engine_at(sqlite_url(current)) as engine:
        require_snapshot_schema(engine, str(current))

    gaps = [SchemaGap("table", "recipe_snapshots", "recipe_snapshots")]
    secret = missing_schema_message(gaps, "postgresql://me:s3cret@db/bake")
    assert "s3cret" not in secret
    assert "--database-url 'postgresql://me:***@db/bake'" in secret


def test_split_table_definitions_respects_quotes_comments_and_parentheses() -> None:
    sql = (
        'CREATE TABLE "t(x" (\n\ta INTEGER, -- a, comment\n\t"b,c" TEXT DEFAULT \'x,)\', '
        "\n\t[d] NUMERIC(10, 4) /* , */ CHECK (d IN (1, 2)), \n\tPRIMARY KEY (a)\n) WITHOUT ROWID"
    )
    definitions, tail = split_table_definitions(sql)
    assert definitions == [
        "a INTEGER",
        "-- a, comment\n\t\"b,c\" TEXT DEFAULT 'x,)'",
        "[d] NUMERIC(10, 4) /* , */ CHECK (d IN (1, 2))",
        "PRIMARY KEY (a)",
    ]
    assert tail == " WITHOUT ROWID"
    names = [_definition_name(d) for d in definitions if not _is_table_constraint(d)]
    assert names == ["a", "b,c", "d"]


# --- SQLite: the application's own 33-table schema --------------------------------------------


@pytest.fixture
def real_pre_db(tmp_path: Path) -> Path:
    """A SQLite file made by the application's pre-snapshot DDL (WAL, as it runs), with rows."""
    path = tmp_path / "bake_tracker_pre.db"
    build_from_ddl(path, APP_PRE_SNAPSHOT_SCHEMA, seed=True)
    return path


@pytest.fixture
def real_post_reference(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Reflection of the snapshot-era tables as the application's current DDL creates them."""
    path = tmp_path / "bake_tracker_post.db"
    build_from_ddl(path, APP_SCHEMA, seed=False)
    with engine_at(sqlite_url(path)) as engine:
        # The application leaves this key unnamed; our models name it (for drop order on
        # servers). SQLite never uses a key's name, so names are not compared here.
        return schema_fingerprint(engine, SNAPSHOT_TABLES, foreign_key_names=False)


def test_real_schema_upgrade_matches_the_post_snapshot_ddl(
    real_pre_db: Path, real_post_reference: dict[str, dict[str, Any]]
) -> None:
    others_before = sqlite_schema_rows(real_pre_db, excluding=SNAPSHOT_TABLES)
    with engine_at(sqlite_url(real_pre_db)) as engine:
        old_columns = column_names(engine)
        assert len(old_columns) == 32
        rows_before = table_rows(engine, old_columns)
        assert set(describe_gaps(find_missing(engine))) == EXPECTED_GAPS | {CHECK_GAP}
        upgrade_schema(engine)

        found = schema_fingerprint(engine, SNAPSHOT_TABLES, foreign_key_names=False)
        assert_same_schema(found, real_post_reference, "application DDL")
        assert table_rows(engine, old_columns) == rows_before
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            tables = conn.exec_driver_sql(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            ).scalar()
            assert tables == 33
    assert sqlite_schema_rows(real_pre_db, excluding=SNAPSHOT_TABLES) == others_before


def test_real_schema_keys_into_rebuilt_tables_still_act(real_pre_db: Path) -> None:
    with engine_at(sqlite_url(real_pre_db)) as engine:
        upgrade_schema(engine)
        with engine.connect() as conn:
            with conn.begin():
                conn.exec_driver_sql("DELETE FROM production_runs WHERE id = 1")
                # ON DELETE CASCADE / SET NULL from tables that point at the rebuilt table.
                assert (
                    conn.exec_driver_sql(
                        "SELECT count(*) FROM production_consumptions WHERE production_run_id = 1"
                    ).scalar()
                    == 0
                )
                assert conn.exec_driver_sql(
                    "SELECT production_run_id FROM production_losses WHERE id = 1"
                ).all() == [(None,)]
                conn.rollback()
            for statement in (
                "DELETE FROM recipes WHERE id = 2",  # a component of recipe 1: RESTRICT
                "UPDATE production_runs SET recipe_snapshot_id = 99 WHERE id = 2",
                "UPDATE recipes SET base_recipe_id = id WHERE id = 1",  # the new CHECK
            ):
                with pytest.raises(sa.exc.IntegrityError), conn.begin():
                    conn.exec_driver_sql(statement)


def test_real_schema_dry_run_changes_no_byte(real_pre_db: Path) -> None:
    before = real_pre_db.read_bytes()
    with engine_at(sqlite_url(real_pre_db)) as engine:
        report = upgrade_schema(engine, dry_run=True)
        assert len(report.plan.steps) == 11
    assert real_pre_db.read_bytes() == before


@pytest.mark.process
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_real_schema_upgrade_killed_mid_transaction_completes_on_rerun(
    tmp_path: Path, real_post_reference: dict[str, dict[str, Any]], journal_mode: str
) -> None:
    path = tmp_path / f"killed_{journal_mode}.db"
    build_from_ddl(path, APP_PRE_SNAPSHOT_SCHEMA, journal_mode=journal_mode, seed=True)
    with engine_at(sqlite_url(path)) as engine:
        old_columns = column_names(engine)
        rows_before = table_rows(engine, old_columns)
        gaps_before = find_missing(engine)
        # Killed after recipes was rebuilt inside the open transaction.
        k = step_number(plan_upgrade(engine).steps, "rebuild table production_runs")
    script = textwrap.dedent(
        """
        import os, signal, sys
        from sqlalchemy.engine import URL
        from snapshot_backfill.database import open_engine
        from snapshot_backfill.schema_upgrade import upgrade_schema

        def on_step(step):
            if step.number == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)

        upgrade_schema(open_engine(URL.create("sqlite", database=sys.argv[1])), on_step=on_step)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path), str(k)], capture_output=True, timeout=60
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    with engine_at(sqlite_url(path)) as engine:
        assert find_missing(engine) == gaps_before
        assert table_rows(engine, old_columns) == rows_before
        report = upgrade_schema(engine)
        assert len(report.steps_executed) == 11
        found = schema_fingerprint(engine, SNAPSHOT_TABLES, foreign_key_names=False)
        assert_same_schema(found, real_post_reference, f"after SIGKILL ({journal_mode})")
        assert table_rows(engine, old_columns) == rows_before
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []


# --- PostgreSQL and MariaDB --------------------------------------------------------------------


@pytest.fixture(
    params=[
        pytest.param(POSTGRESQL, id=POSTGRESQL, marks=pytest.mark.postgresql),
        pytest.param(MARIADB, id=MARIADB, marks=pytest.mark.mariadb),
    ]
)
def server(
    request: pytest.FixtureRequest, server_urls: dict[str, Optional[URL]], tmp_path: Path
) -> Iterator[Backend]:
    """A fresh database of the test's own on the PostgreSQL or MariaDB server (else skip)."""
    kind = request.param
    if server_urls[kind] is None:
        pytest.skip(skip_reason(kind))
    with provision(kind, server_urls[kind], tmp_path) as backend:
        yield backend


_SERVER_REFERENCES: dict[str, dict[str, dict[str, Any]]] = {}


def server_reference(server: Backend) -> dict[str, dict[str, Any]]:
    """Reflection of the models' create_all on this server (made once per backend)."""
    if server.kind not in _SERVER_REFERENCES:
        reference_db = server.sibling()
        build_current(reference_db.url)
        with engine_at(reference_db.url) as engine:
            _SERVER_REFERENCES[server.kind] = upgraded_schema_fingerprint(engine)
    return _SERVER_REFERENCES[server.kind]


def test_server_upgrade_dry_run_then_run_then_nothing_to_do(server: Backend) -> None:
    reference = server_reference(server)
    url = server.url
    build_pre_snapshot(url)
    with engine_at(url) as engine:
        tables = tuple(t for t in MODEL_TABLES if t != "recipe_snapshots")
        schema_before = schema_fingerprint(engine, tables)
        old_columns = column_names(engine)
        rows_before = table_rows(engine, old_columns)
        expected = EXPECTED_GAPS | ({CHECK_GAP} if server.kind == "postgresql" else set())
        assert set(describe_gaps(find_missing(engine))) == expected

        dry = upgrade_schema(engine, dry_run=True)
        assert dry.steps_executed == () and not dry.already_current
        assert "CREATE TABLE recipe_snapshots" in dry.plan.sql_script()
        assert schema_fingerprint(engine, tables) == schema_before
        assert sa.inspect(engine).has_table("recipe_snapshots") is False
        assert table_rows(engine, old_columns) == rows_before

        report = upgrade_schema(engine)
        assert len(report.steps_executed) == len(dry.plan.steps)
        assert_same_schema(upgraded_schema_fingerprint(engine), reference, server.kind)
        assert table_rows(engine, old_columns) == rows_before
        new_columns = {"recipes": ["id", "base_recipe_id", "variant_name", "is_production_ready"]}
        assert [tuple(r[1:]) for r in table_rows(engine, new_columns)["recipes"]] == [
            (None, None, False)
        ] * 3

        again = upgrade_schema(engine)
        assert again.already_current and again.steps_executed == ()
        assert_same_schema(upgraded_schema_fingerprint(engine), reference, f"{server.kind}, rerun")
        # Rendering ALTER TABLE ... ADD CONSTRAINT left the shared models as they were.
        create = CreateTable(Base.metadata.tables["recipes"]).compile(dialect=engine.dialect)
        assert ("ck_recipe_no_self_variant" in str(create)) is (server.kind == "postgresql")


def test_server_second_upgrade_while_one_runs_is_refused(server: Backend) -> None:
    url = server.url
    build_pre_snapshot(url)
    refused: list[Exception] = []
    with engine_at(url) as engine:

        def start_another(step: UpgradeStep) -> None:
            if step.number == 3:
                with pytest.raises(LockedError) as caught:
                    upgrade_schema(engine, lock_timeout=0)
                refused.append(caught.value)

        report = upgrade_schema(engine, on_step=start_another)
        assert len(refused) == 1 and "another snapshot-backfill" in str(refused[0])
        assert len(report.steps_executed) == report.plan.steps[-1].total
        assert find_missing(engine) == []


@pytest.mark.parametrize("which", ["add columns", "drop the server default", "last"])
def test_server_interrupted_upgrade_completes_on_rerun(server: Backend, which: str) -> None:
    reference = server_reference(server)
    url = server.url
    build_pre_snapshot(url)
    with engine_at(url) as engine:
        old_columns = column_names(engine)
        rows_before = table_rows(engine, old_columns)
        gaps_before = find_missing(engine)
        plan = plan_upgrade(engine)
        k = step_number(plan.steps, which)
        with pytest.raises(Interrupted):
            upgrade_schema(engine, on_step=interrupt_at(k, []))

        remaining = plan_upgrade(engine)
        if server.kind == "postgresql":
            # One transaction: nothing of steps 1..k-1 survives.
            assert find_missing(engine) == gaps_before
        else:
            # Steps 1..k-1 committed one by one; what is left is exactly the rest of the plan.
            assert Counter(s for step in remaining.steps for s in step.statements) == Counter(
                s for step in plan.steps[k - 1 :] for s in step.statements
            )
        assert table_rows(engine, old_columns) == rows_before

        report = upgrade_schema(engine)
        assert len(report.steps_executed) == len(remaining.steps)
        assert_same_schema(
            upgraded_schema_fingerprint(engine), reference, f"{server.kind} after {which}"
        )
        assert table_rows(engine, old_columns) == rows_before


def test_server_lock_wait_is_bounded_and_reported(server: Backend) -> None:
    url = server.url
    build_pre_snapshot(url)
    with engine_at(url) as engine, engine_at(url) as application:
        # The application sits in a transaction that has read recipes: ALTER TABLE must wait.
        with application.connect() as idle, idle.begin():
            idle.exec_driver_sql("SELECT count(*) FROM recipes").scalar()
            with pytest.raises(LockedError, match="could not lock its table"):
                upgrade_schema(engine, lock_timeout=0.2)
        if server.kind == "postgresql":
            assert set(describe_gaps(find_missing(engine))) == EXPECTED_GAPS | {CHECK_GAP}
        report = upgrade_schema(engine)
        assert report.steps_executed and find_missing(engine) == []


def test_server_failed_step_says_what_was_kept(server: Backend) -> None:
    url = server.url
    build_pre_snapshot(url)
    with engine_at(url) as engine:
        with engine.begin() as conn:
            # A hand-added base_recipe_id pointing at a recipe that does not exist.
            conn.exec_driver_sql("ALTER TABLE recipes ADD COLUMN base_recipe_id INTEGER")
            conn.exec_driver_sql("UPDATE recipes SET base_recipe_id = 999 WHERE id = 2")
        total = len(plan_upgrade(engine).steps)
        with pytest.raises(SchemaUpgradeError, match="add foreign key recipes") as caught:
            upgrade_schema(engine)
        if server.kind == "postgresql":
            assert "nothing was changed (rolled back)" in str(caught.value)
            assert len(plan_upgrade(engine).steps) == total
        else:
            assert "are committed; re-run upgrade-schema to complete" in str(caught.value)
            assert len(plan_upgrade(engine).steps) < total
