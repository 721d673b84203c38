"""Our models' DDL on SQLite matches the application's real tables, column for column."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from snapshot_backfill.models import Base, pre_snapshot_metadata
from snapshot_backfill.testing.appschema import APP_SCHEMA, require

OUR_TABLES = sorted(Base.metadata.tables)


def _describe(engine: sa.Engine, table: str) -> dict[str, Any]:
    inspector = sa.inspect(engine)
    return {
        "columns": sorted(
            (c["name"], str(c["type"]), c["nullable"], c.get("default"))
            for c in inspector.get_columns(table)
        ),
        "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
        # Foreign-key names differ only where ours needs one for ALTER on the servers.
        "foreign_keys": sorted(
            (
                tuple(fk["constrained_columns"]),
                fk["referred_table"],
                tuple(fk["referred_columns"]),
                (fk.get("options") or {}).get("ondelete"),
            )
            for fk in inspector.get_foreign_keys(table)
        ),
        "unique_constraints": sorted(
            (u["name"] or "", tuple(u["column_names"]))
            for u in inspector.get_unique_constraints(table)
        ),
        "indexes": sorted(
            (i["name"], tuple(i["column_names"]), bool(i["unique"]))
            for i in inspector.get_indexes(table)
        ),
        "checks": sorted(
            (c["name"], " ".join(c["sqltext"].split()))
            for c in inspector.get_check_constraints(table)
        ),
    }


@pytest.fixture(scope="module")
def app_engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("app") / "app.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(require(APP_SCHEMA).read_text())
    conn.close()
    engine = sa.create_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def our_engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path: Path = tmp_path_factory.mktemp("ours") / "ours.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("table", OUR_TABLES)
def test_table_matches_the_application(table: str, app_engine: Any, our_engine: Any) -> None:
    ours = _describe(our_engine, table)
    theirs = _describe(app_engine, table)
    if table == "ingredients":
        # Ours leaves out reference columns the migrator never reads (foodex2_code, JSON lists,
        # moisture_pct); every column we do have must be the application's, and all of the
        # application's NOT NULL columns must be ours (a bulk insert must fill them).
        theirs_columns = set(theirs["columns"])
        assert set(ours["columns"]) <= theirs_columns
        assert {c for c in theirs_columns if not c[2]} <= set(ours["columns"])
        ours.pop("columns")
        theirs.pop("columns")
    if table == "production_runs":
        # events is outside our six tables; the application's key to it is the one we omit.
        events_key = (("event_id",), "events", ("id",), "RESTRICT")
        theirs["foreign_keys"].remove(events_key)
    assert ours == theirs


def test_no_server_defaults_on_the_common_columns(our_engine: Any) -> None:
    inspector = sa.inspect(our_engine)
    for table in OUR_TABLES:
        columns = {c["name"]: c for c in inspector.get_columns(table)}
        for name in ("uuid", "created_at", "updated_at"):
            assert columns[name]["default"] is None, f"{table}.{name} has a server default"
            assert columns[name]["nullable"] is False, f"{table}.{name} is nullable"


def test_a_server_create_all_does_not_drop_the_cycle_key_from_sqlite() -> None:
    """SQLAlchemy marks a key it created by ALTER as never inline; ours is reset after."""
    statements: list[str] = []
    server = sa.create_mock_engine(
        "mysql+pymysql://", lambda sql, *a, **k: statements.append(str(sql))
    )
    Base.metadata.create_all(server, checkfirst=False)
    Base.metadata.drop_all(server, checkfirst=False)
    assert any("ADD CONSTRAINT fk_production_runs_recipe_snapshot_id" in s for s in statements)
    engine = sa.create_engine("sqlite://")
    try:
        Base.metadata.create_all(engine)
        keys = sa.inspect(engine).get_foreign_keys("production_runs")
    finally:
        engine.dispose()
    assert ("recipe_snapshot_id",) in {tuple(k["constrained_columns"]) for k in keys}


def test_the_pre_snapshot_tables_keep_their_foreign_keys() -> None:
    old = pre_snapshot_metadata()
    keys = {
        (t.name, fk.parent.name, fk.column.table.name, fk.ondelete)
        for t in old.tables.values()
        for fk in t.foreign_keys
    }
    assert keys == {
        ("ingredients", "parent_ingredient_id", "ingredients", None),
        ("recipe_ingredients", "recipe_id", "recipes", "CASCADE"),
        ("recipe_ingredients", "ingredient_id", "ingredients", "RESTRICT"),
        ("finished_units", "recipe_id", "recipes", "RESTRICT"),
        ("production_runs", "recipe_id", "recipes", "RESTRICT"),
        ("production_runs", "finished_unit_id", "finished_units", "RESTRICT"),
    }
    assert "recipe_snapshots" not in old.tables
    assert "recipe_snapshot_id" not in old.tables["production_runs"].c
    assert "variant_name" not in old.tables["recipes"].c
