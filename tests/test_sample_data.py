"""The sample data loader: the shipped sample, the application's own shape, malformed files,
refusal, the pre-snapshot schema and all-or-nothing loading (SQLite)."""

from __future__ import annotations

import copy
import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

from snapshot_backfill import sample_data
from snapshot_backfill.database import open_engine
from snapshot_backfill.errors import BadInputError, SampleDataError
from snapshot_backfill.models import pre_snapshot_metadata
from snapshot_backfill.sample_data import (
    DEFAULT_SAMPLE_PATH,
    LoadReport,
    SampleLoadError,
    load_sample,
    load_sample_file,
    read_sample,
)

from sample_documents import minimal_document

REPO = Path(__file__).resolve().parent.parent
APP_SAMPLE = Path(__file__).resolve().parent / "data" / "app_sample_3_6.json"

# The counts test_data/README.md documents for test_data/sample_data.json.
SAMPLE_TABLE_COUNTS = {
    "ingredients": 55,
    "recipes": 11,
    "recipe_ingredients": 99,
    "finished_units": 14,
    "production_runs": 64,
    "recipe_snapshots": 8,
}
SAMPLE_REMOVED = {"recipes": 2, "ingredients": 1}
ALREADY_LINKED = ("run-057", "run-058", "run-059", "run-060", "run-061", "run-064")
LINK_EXISTING = ("run-062", "run-063")
ORPHANED = ("run-001", "run-002", "run-006", "run-008", "run-011")
TO_MIGRATE = 51


def sqlite_url(path: Path) -> URL:
    return URL.create("sqlite", database=str(path))


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one read-only query on a SQLite file with the stdlib driver."""
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


def scalar(db: Path, sql: str, *params: Any) -> Any:
    return query(db, sql, *params)[0][0]


def table_names(db: Path) -> set[str]:
    return {row[0] for row in query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine on a new SQLite file, disposed after the test."""
    created = open_engine(sqlite_url(tmp_path / "bake.db"), create=True)
    try:
        yield created
    finally:
        created.dispose()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LoadReport]:
    """The shipped sample loaded once into a SQLite file, for read-only checks."""
    db = tmp_path_factory.mktemp("sample") / "bake.db"
    return db, load_sample_file(sqlite_url(db))


# --------------------------------------------------------------------------------------------
# The shipped sample
# --------------------------------------------------------------------------------------------


def test_default_sample_is_the_test_data_file() -> None:
    # A copy, not a symlink, which a Windows checkout (no core.symlinks) makes a text file.
    assert (
        DEFAULT_SAMPLE_PATH.read_bytes() == (REPO / "test_data" / "sample_data.json").read_bytes()
    ), "copy test_data/sample_data.json to src/snapshot_backfill/data/ (they must not differ)"


def test_sample_loads_with_the_documented_counts(loaded: tuple[Path, LoadReport]) -> None:
    db, report = loaded
    assert report.inserted == SAMPLE_TABLE_COUNTS
    assert report.removed == SAMPLE_REMOVED
    for table, count in SAMPLE_TABLE_COUNTS.items():
        assert scalar(db, f"SELECT count(*) FROM {table}") == count, table
    assert report.schema == "current"
    assert report.ignored_arrays == {"products": 6, "events": 5}
    assert report.minimal_ingredients == ["espresso_powder"]
    assert report.default_finished_units == ["vanilla_pound_cake_batch"]
    json.dumps(report.to_dict())  # plain values only


def test_expected_counts_match_the_readme(loaded: tuple[Path, LoadReport]) -> None:
    _, report = loaded
    assert report.expected is not None
    assert report.expected.to_dict() == {
        "total_runs": 64,
        "already_linked": len(ALREADY_LINKED),
        "link_existing": len(LINK_EXISTING),
        "to_migrate": TO_MIGRATE,
        "orphaned": len(ORPHANED),
        "already_linked_refs": list(ALREADY_LINKED),
        "link_existing_refs": list(LINK_EXISTING),
        "orphaned_refs": list(ORPHANED),
    }


def test_runs_of_deleted_recipes_point_at_missing_rows(loaded: tuple[Path, LoadReport]) -> None:
    db, report = loaded
    orphaned = [
        row[0]
        for row in query(
            db,
            "SELECT id FROM production_runs WHERE recipe_id NOT IN (SELECT id FROM recipes) "
            "ORDER BY id",
        )
    ]
    assert orphaned == report.orphaned_run_ids == [report.run_ids[ref] for ref in ORPHANED]
    assert report.orphaned_runs == len(ORPHANED)
    # Deleted with foreign keys off, as production did: nothing else was cascaded away.
    assert (
        scalar(
            db,
            "SELECT count(DISTINCT recipe_id) FROM production_runs WHERE id IN "
            f"({','.join(map(str, orphaned))})",
        )
        == 2
    )


def test_linked_runs_point_at_application_snapshots(loaded: tuple[Path, LoadReport]) -> None:
    db, report = loaded
    rows = query(
        db,
        "SELECT r.id, s.is_backfilled, s.recipe_id = r.recipe_id, s.snapshot_date = r.produced_at "
        "FROM production_runs r JOIN recipe_snapshots s ON s.id = r.recipe_snapshot_id "
        "WHERE s.production_run_id = r.id ORDER BY r.id",
    )
    assert [row[0] for row in rows] == [report.run_ids[ref] for ref in ALREADY_LINKED]
    assert all(row[1:] == (0, 1, 1) for row in rows)


def test_unlinked_snapshots_exist_for_runs_without_a_link(
    loaded: tuple[Path, LoadReport],
) -> None:
    db, report = loaded
    rows = query(
        db,
        "SELECT r.id FROM production_runs r JOIN recipe_snapshots s "
        "ON s.production_run_id = r.id WHERE r.recipe_snapshot_id IS NULL ORDER BY r.id",
    )
    assert [row[0] for row in rows] == [report.run_ids[ref] for ref in LINK_EXISTING]


def test_runs_to_migrate(loaded: tuple[Path, LoadReport]) -> None:
    db, _ = loaded
    count = scalar(
        db,
        "SELECT count(*) FROM production_runs r WHERE r.recipe_snapshot_id IS NULL "
        "AND r.recipe_id IN (SELECT id FROM recipes) "
        "AND r.id NOT IN (SELECT production_run_id FROM recipe_snapshots)",
    )
    assert count == TO_MIGRATE


def test_recipe_cases_are_present(loaded: tuple[Path, LoadReport]) -> None:
    db, _ = loaded

    def runs_of(name: str) -> int:
        return int(
            scalar(
                db,
                "SELECT count(*) FROM production_runs r JOIN recipes p ON p.id = r.recipe_id "
                "WHERE p.name = ?",
                name,
            )
        )

    # Archived, with runs.
    assert query(db, "SELECT name FROM recipes WHERE is_archived = 1") == [("Gingerbread Cookies",)]
    assert runs_of("Gingerbread Cookies") > 0
    # A variant of a base recipe.
    assert query(
        db,
        "SELECT v.variant_name, b.name FROM recipes v JOIN recipes b ON b.id = v.base_recipe_id",
    ) == [("Frosted", "Sugar Cookies")]
    assert runs_of("Frosted Sugar Cookies") > 0
    # No ingredients, with runs.
    empty = query(
        db, "SELECT name FROM recipes WHERE id NOT IN (SELECT recipe_id FROM recipe_ingredients)"
    )
    assert empty == [("Peppermint Bark",)]
    assert runs_of("Peppermint Bark") > 0
    # A recipe line whose ingredient row is gone.
    missing = query(
        db,
        "SELECT p.name FROM recipe_ingredients l JOIN recipes p ON p.id = l.recipe_id "
        "WHERE l.ingredient_id NOT IN (SELECT id FROM ingredients)",
    )
    assert missing == [("Pumpkin Spice Muffins",)]
    assert runs_of("Pumpkin Spice Muffins") > 0


def test_only_the_intended_references_dangle(loaded: tuple[Path, LoadReport]) -> None:
    db, _ = loaded
    dangling = {(row[0], row[2]) for row in query(db, "PRAGMA foreign_key_check")}
    assert dangling == {
        ("production_runs", "recipes"),
        ("finished_units", "recipes"),
        ("recipe_ingredients", "ingredients"),
    }


def test_sample_file_has_both_run_spellings_over_a_year() -> None:
    runs = json.loads(DEFAULT_SAMPLE_PATH.read_text(encoding="utf-8"))["production_runs"]
    assert any({"recipe_slug", "batches_produced", "units_produced"} <= set(r) for r in runs)
    assert any({"recipe_name", "num_batches", "actual_yield"} <= set(r) for r in runs)
    dates = sorted(r["produced_at"] for r in runs)
    assert dates[0][:7] == "2023-12" and dates[-1][:7] == "2024-12"


def test_foreign_keys_are_on_again_after_the_load(engine: Engine) -> None:
    load_sample(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


# --------------------------------------------------------------------------------------------
# The application's own shape, and the pre-snapshot schema
# --------------------------------------------------------------------------------------------


def test_application_shaped_file_loads(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    report = load_sample_file(sqlite_url(db), APP_SAMPLE)
    assert report.ignored_arrays == {"products": 10}
    assert len(report.minimal_ingredients) == 11
    assert report.inserted == {
        "ingredients": 11,
        "recipes": 5,
        "recipe_ingredients": 27,
        "finished_units": 0,
        "production_runs": 0,
        "recipe_snapshots": 0,
    }
    assert query(db, "SELECT DISTINCT yield_quantity, yield_unit FROM recipes") == [(1.0, "batch")]
    assert query(db, "SELECT DISTINCT category FROM ingredients") == [("Uncategorized",)]
    assert any("without a yield" in note for note in report.notes)


def test_pre_snapshot_schema_loads(engine: Engine, tmp_path: Path) -> None:
    report = load_sample(engine, metadata=pre_snapshot_metadata())
    db = tmp_path / "bake.db"
    assert "recipe_snapshots" not in table_names(db)
    columns = {row[1] for row in query(db, "PRAGMA table_info(recipes)")}
    assert "variant_name" not in columns and "base_recipe_id" not in columns
    assert report.schema == "pre-snapshot"
    assert report.inserted["production_runs"] == 64
    assert report.orphaned_runs == len(ORPHANED)
    assert report.expected is not None
    assert (report.expected.already_linked, report.expected.link_existing) == (0, 0)
    assert report.expected.to_migrate == 64 - len(ORPHANED)
    assert any("skipped" in note for note in report.notes)


# --------------------------------------------------------------------------------------------
# Malformed files
# --------------------------------------------------------------------------------------------


Mutation = Callable[[dict[str, Any]], Any]


def _set(path: str, value: Any) -> Mutation:
    """Return a mutation that sets a dotted path (``recipes.0.category``) to ``value``."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]

    return mutate


def _snapshot_of_deleted_recipe(doc: dict[str, Any]) -> None:
    doc["snapshot_backfill"]["deleted_recipes"] = [{"slug": "lemon_bars", "name": "Lemon Bars"}]
    doc["production_runs"][0]["recipe_slug"] = "lemon_bars"


MALFORMED: list[tuple[str, Optional[str], Optional[Mutation], str, str]] = [
    # (id, raw text, mutation of minimal_document(), JSON path, part of the problem)
    ("bad-json", '{"version": "3.6",', None, "$", "invalid JSON at line 1"),
    ("not-an-object", "[]", None, "$", "expected an object"),
    ("missing-version", None, _delete("version"), "$.version", "required field is missing"),
    ("version-not-a-string", None, _set("version", 3.6), "$.version", "expected a string"),
    ("version-4", None, _set("version", "4.0"), "$.version", "unsupported version"),
    ("exported-at-no-z", None, _set("exported_at", "2025-01-06T18:30:00"), "$.exported_at", "Z"),
    ("other-application", None, _set("application", "cake-tracker"), "$.application", "expected"),
    ("recipes-not-array", None, _set("recipes", {}), "$.recipes", "expected an array"),
    (
        "missing-category",
        None,
        _delete("recipes.1.category"),
        "$.recipes[1].category",
        "required field is missing",
    ),
    (
        "missing-line-unit",
        None,
        _delete("recipes.0.ingredients.1.unit"),
        "$.recipes[0].ingredients[1].unit",
        "required field is missing",
    ),
    (
        "quantity-not-a-number",
        None,
        _set("recipes.0.ingredients.1.quantity", "two"),
        "$.recipes[0].ingredients[1].quantity",
        "expected a number",
    ),
    (
        "quantity-nan",
        None,
        _set("recipes.0.ingredients.0.quantity", float("nan")),
        "$.recipes[0].ingredients[0].quantity",
        "finite",
    ),
    (
        "duplicate-ingredient",
        None,
        _set("ingredients.1.slug", "flour_all_purpose"),
        "$.ingredients[1].slug",
        "already used",
    ),
    (
        "variant-of-unknown",
        None,
        _set("recipes.1.base_recipe_slug", "sourdough"),
        "$.recipes[1].base_recipe_slug",
        "unknown base recipe",
    ),
    (
        "unit-unknown-recipe",
        None,
        _set("finished_units.0.recipe_slug", "lemon_bars"),
        "$.finished_units[0].recipe_slug",
        "unknown recipe",
    ),
    (
        "bad-yield-mode",
        None,
        _set("finished_units.0.yield_mode", "dozen"),
        "$.finished_units[0].yield_mode",
        "discrete_count",
    ),
    (
        "run-unknown-recipe",
        None,
        _set("production_runs.0.recipe_slug", "lemon_bars"),
        "$.production_runs[0].recipe_slug",
        "unknown recipe",
    ),
    (
        "run-unknown-recipe-name",
        None,
        _set("production_runs.1.recipe_name", "Lemon Bars"),
        "$.production_runs[1].recipe_name",
        "unknown recipe",
    ),
    (
        "run-recipe-name-null",
        None,
        _set("production_runs.1.recipe_name", None),
        "$.production_runs[1].recipe_name",
        "null",
    ),
    (
        "zero-batches",
        None,
        _set("production_runs.0.batches_produced", 0),
        "$.production_runs[0].batches_produced",
        "at least 1",
    ),
    (
        "yield-boolean",
        None,
        _set("production_runs.0.units_produced", True),
        "$.production_runs[0].units_produced",
        "expected an integer",
    ),
    (
        "spellings-disagree",
        None,
        _set("production_runs.0.num_batches", 3),
        "$.production_runs[0].num_batches",
        "contradicts",
    ),
    (
        "bad-produced-at",
        None,
        _set("production_runs.0.produced_at", "last Tuesday"),
        "$.production_runs[0].produced_at",
        "ISO 8601",
    ),
    (
        "snapshot-unknown-run",
        None,
        _set("snapshot_backfill.recipe_snapshots.0.run", "run-9"),
        "$.snapshot_backfill.recipe_snapshots[0].run",
        "unknown run",
    ),
    (
        "snapshot-of-deleted-recipe",
        None,
        _snapshot_of_deleted_recipe,
        "$.snapshot_backfill.recipe_snapshots[0].run",
        "deleted recipe",
    ),
    (
        "extension-typo",
        None,
        _set("snapshot_backfill.deleted_recipe", []),
        "$.snapshot_backfill.deleted_recipe",
        "unknown extension key",
    ),
    (
        "deleted-ingredient-unknown",
        None,
        _set("snapshot_backfill.deleted_ingredients", ["nutmeg_ground"]),
        "$.snapshot_backfill.deleted_ingredients[0]",
        "unknown ingredient",
    ),
]


def test_minimal_document_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "minimal.json"
    path.write_text(json.dumps(minimal_document()), encoding="utf-8")
    report = load_sample_file(sqlite_url(tmp_path / "minimal.db"), path)
    assert report.inserted["production_runs"] == 2
    assert report.inserted["recipe_snapshots"] == 1
    assert report.default_finished_units == ["plain_scones_batch"]


@pytest.mark.parametrize(
    ("text", "mutate", "json_path", "problem"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_file_names_file_and_json_path(
    tmp_path: Path,
    text: Optional[str],
    mutate: Optional[Mutation],
    json_path: str,
    problem: str,
) -> None:
    if text is None:
        assert mutate is not None
        doc = copy.deepcopy(minimal_document())
        mutate(doc)
        text = json.dumps(doc)
    path = tmp_path / "broken.json"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(SampleDataError) as caught:
        read_sample(path)
    error = caught.value
    assert (error.path, error.json_path) == (str(path), json_path), str(error)
    assert problem in error.problem
    assert str(error).startswith(f"{path}: {json_path}: ")

    db = tmp_path / "never.db"
    with pytest.raises(SampleDataError):
        load_sample_file(sqlite_url(db), path)
    assert not db.exists()


def test_missing_file_is_bad_input_not_sample_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(BadInputError, match="not found") as caught:
        load_sample_file(sqlite_url(tmp_path / "never.db"), missing)
    assert not isinstance(caught.value, SampleDataError)
    assert not (tmp_path / "never.db").exists()


# --------------------------------------------------------------------------------------------
# Refusal and all-or-nothing
# --------------------------------------------------------------------------------------------


def _dump(db: Path) -> list[str]:
    with closing(sqlite3.connect(db)) as conn:
        return list(conn.iterdump())


@pytest.mark.parametrize(
    "existing_sql",
    [
        "CREATE TABLE recipes (id INTEGER PRIMARY KEY, name TEXT); "
        "INSERT INTO recipes (name) VALUES ('Grandma''s Pie')",
        "CREATE TABLE snapshot_backfill_journal (id INTEGER PRIMARY KEY, run_id INTEGER); "
        "INSERT INTO snapshot_backfill_journal (run_id) VALUES (7)",
    ],
    ids=["application-table", "journal-table"],
)
def test_refuses_a_database_that_has_our_tables(tmp_path: Path, existing_sql: str) -> None:
    db = tmp_path / "bake.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.executescript(existing_sql)
    before = _dump(db)

    with pytest.raises(BadInputError, match="refusing to load"):
        load_sample_file(sqlite_url(db), DEFAULT_SAMPLE_PATH)

    assert db.exists()
    assert _dump(db) == before


def test_second_load_is_refused_and_changes_nothing(loaded: tuple[Path, LoadReport]) -> None:
    db, _ = loaded
    before = _dump(db)
    with pytest.raises(BadInputError, match="already has the table"):
        load_sample_file(sqlite_url(db))
    assert _dump(db) == before


def _fail_on_runs(engine: Engine) -> None:
    @event.listens_for(engine, "before_cursor_execute")
    def fail(*args: Any) -> None:
        statement = args[2]
        if statement.startswith("INSERT INTO production_runs"):
            raise RuntimeError("injected failure")


def test_failure_mid_insert_leaves_no_tables(engine: Engine, tmp_path: Path) -> None:
    _fail_on_runs(engine)
    with pytest.raises(RuntimeError, match="injected"):
        load_sample(engine)
    assert table_names(tmp_path / "bake.db") == set()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_database_error_is_reported_and_rolled_back(engine: Engine, tmp_path: Path) -> None:
    # Valid for the parser, refused by a CHECK constraint: a failure inside the database.
    sample = read_sample(DEFAULT_SAMPLE_PATH)
    broken = dataclasses.replace(
        sample.production_runs[-1],
        columns={**sample.production_runs[-1].columns, "num_batches": 0},
    )
    sample = dataclasses.replace(sample, production_runs=(*sample.production_runs[:-1], broken))
    with pytest.raises(SampleLoadError, match="nothing was loaded"):
        load_sample(engine, sample)
    assert table_names(tmp_path / "bake.db") == set()


def test_failed_load_deletes_the_database_file_it_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_engine(url: URL, **kwargs: Any) -> Engine:
        created = open_engine(url, **kwargs)
        _fail_on_runs(created)
        return created

    monkeypatch.setattr(sample_data, "open_engine", failing_engine)
    db = tmp_path / "new.db"
    with pytest.raises(RuntimeError, match="injected"):
        load_sample_file(sqlite_url(db))
    assert list(tmp_path.iterdir()) == []


def test_metadata_without_the_application_tables_is_rejected(engine: Engine) -> None:
    with pytest.raises(ValueError, match="lacks the table"):
        load_sample(engine, metadata=sa.MetaData())
