"""Streaming table digests: equal content gives equal digests on every backend, and a change
shows in exactly the table it touches."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from snapshot_backfill.database import open_engine
from snapshot_backfill.models import production_runs
from snapshot_backfill.testing.backends import SQLITE, Backend, provision
from snapshot_backfill.testing.digest import (
    TableDigest,
    changed_tables,
    normaliser_for,
    raw_text,
    table_digests,
)
from snapshot_backfill.testing.expectations import StateInfo

KINDS = sa.MetaData()
# One column of each kind the backends store differently.
values = sa.Table(
    "digest_values",
    KINDS,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("label", sa.String(40)),
    sa.Column("body", sa.Text),
    sa.Column("at", sa.DateTime),
    sa.Column("aware_at", sa.DateTime(timezone=True)),
    sa.Column("day", sa.Date),
    sa.Column("money", sa.Numeric(10, 4)),
    sa.Column("ratio", sa.Float),
    sa.Column("flag", sa.Boolean),
    sa.Column("blob", sa.LargeBinary),
)
ROWS: list[dict[str, Any]] = [
    {
        "id": 2,
        "label": "crème brûlée",
        "body": 'a "quoted"\nline',
        "at": datetime(2025, 7, 1, 12, 0, 0),
        # SQLite and MariaDB drop the offset, PostgreSQL keeps the instant: UTC is the same
        # value on all three.
        "aware_at": datetime(2025, 7, 1, 12, 0, 0, tzinfo=timezone.utc),
        "day": date(2025, 7, 1),
        "money": Decimal("12.5000"),
        "ratio": 0.1,
        "flag": True,
        "blob": b"\x00\xff",
    },
    {
        "id": 1,
        "label": None,
        "body": "",
        # No fraction of a second: MariaDB's DATETIME has none (its digest says so).
        "at": datetime(2024, 2, 29, 23, 59, 59),
        "aware_at": None,
        "day": None,
        "money": Decimal("0"),
        "ratio": 2.0,
        "flag": False,
        "blob": None,
    },
]


def _fill(engine: Engine) -> None:
    KINDS.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(values), ROWS)


def test_equal_content_gives_equal_digests_on_every_backend(
    backend: Backend, tmp_path: Path
) -> None:
    engine = backend.make_engine()
    _fill(engine)
    found = table_digests(engine)
    # The reference: the same rows in a SQLite database of its own.
    (tmp_path / "reference").mkdir()
    with provision(SQLITE, None, tmp_path / "reference") as reference:
        _fill(reference.make_engine())
        expected = table_digests(reference.make_engine())
    assert found == expected, f"{backend.describe()}: {found} != SQLite's {expected}"
    assert found["digest_values"].rows == len(ROWS)


def test_sqlite_text_spellings_of_the_same_values_digest_alike(sqlite_backend: Backend) -> None:
    engine = sqlite_backend.make_engine()
    _fill(engine)
    before = table_digests(engine)
    with engine.begin() as conn:
        # What another writer may have stored for the same values: ISO 'T', a 'Z' offset,
        # numbers as text, a boolean as text.
        conn.exec_driver_sql(
            "UPDATE digest_values SET at = '2025-07-01T12:00:00', "
            "aware_at = '2025-07-01 12:00:00Z', money = '12.5', flag = 1 WHERE id = 2"
        )
    assert table_digests(engine) == before


def test_a_changed_cell_changes_exactly_its_tables_digest(
    backend: Backend, build_state: Callable[[str], StateInfo]
) -> None:
    info = build_state("partially_migrated")
    engine = backend.make_engine()
    before = table_digests(engine)
    assert set(before) >= {"production_runs", "recipes", "recipe_snapshots"}
    run_id = info.to_migrate[0]
    # Plain SQL: the model's onupdate would change updated_at too.
    set_notes = sa.text("UPDATE production_runs SET notes = :notes WHERE id = :id")
    with engine.begin() as conn:
        notes = conn.execute(
            select(production_runs.c.notes).where(production_runs.c.id == run_id)
        ).scalar_one()
        conn.execute(set_notes, {"notes": "changed", "id": run_id})
    after = table_digests(engine)
    assert changed_tables(before, after) == ["production_runs"]
    assert after["production_runs"].rows == before["production_runs"].rows
    with engine.begin() as conn:  # the value it had: the digest it had
        conn.execute(set_notes, {"notes": notes, "id": run_id})
    assert table_digests(engine) == before


def test_row_counts_are_every_tables_rows(
    backend: Backend, build_state: Callable[[str], StateInfo]
) -> None:
    info = build_state("partially_migrated")
    engine = backend.make_engine()
    digests = table_digests(engine)
    assert digests["production_runs"].rows == info.total_runs
    with engine.connect() as conn:
        for name in digests:
            count = conn.execute(select(func.count()).select_from(sa.table(name))).scalar_one()
            assert digests[name].rows == count, name
        conn.rollback()


def test_a_subset_of_tables_and_an_open_connection(
    backend: Backend, build_state: Callable[[str], StateInfo]
) -> None:
    build_state("partially_migrated")
    engine = backend.make_engine()
    every = table_digests(engine)
    with engine.connect() as conn:
        some = table_digests(conn, ["recipes", "production_runs"])
        conn.rollback()
    assert some == {n: every[n] for n in ("recipes", "production_runs")}


def test_changed_tables_counts_added_and_removed_tables() -> None:
    a = TableDigest(rows=1, sha256="a")
    assert changed_tables({"x": a, "y": a}, {"y": a, "z": a}) == ["x", "z"]
    assert changed_tables({"x": a}, {"x": TableDigest(rows=1, sha256="b")}) == ["x"]
    assert changed_tables({"x": a}, {"x": TableDigest(rows=1, sha256="a")}) == []


def test_a_sqlite_file_is_read_without_being_written(tmp_path: Path) -> None:
    path = tmp_path / "ro.sqlite"
    engine = open_engine(sa.engine.URL.create("sqlite", database=str(path)), create=True)
    try:
        _fill(engine)
        engine.dispose()
        path.chmod(0o444)
        first = table_digests(engine)
    finally:
        engine.dispose()
    assert first["digest_values"].rows == len(ROWS)


# --- the canonical text each backend's values are reduced to ---------------------------------
# Each row: a column type, what one driver gives, and the text every backend's spelling of that
# value must become (so equal content digests alike on SQLite, PostgreSQL and MariaDB).
CANONICAL_CASES = [
    (sa.Numeric(), Decimal("1.50"), "1.5"),
    (sa.Numeric(), 1.5, "1.5"),
    (sa.Numeric(), " 1.500 ", "1.5"),  # SQLite text in a numeric column
    (sa.Numeric(), "a pinch", "a pinch"),  # SQLite keeps what is not a number as it is
    (sa.Numeric(), Decimal("-0.000"), "0"),
    (sa.Numeric(), Decimal("1E+3"), "1000"),
    (sa.Float(), float("nan"), "nan"),
    (sa.Numeric(), Decimal("Infinity"), "infinity"),
    (sa.Boolean(), True, "1"),
    (sa.Integer(), "7", "7"),
    (sa.DateTime(), "2024-01-02 03:04:05", "2024-01-02T03:04:05"),
    (sa.DateTime(), "2024-01-02T03:04:05Z", "2024-01-02T03:04:05"),
    (
        sa.DateTime(),
        datetime(2024, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1))),
        "2024-01-02T03:04:05",
    ),
    (sa.DateTime(), date(2024, 1, 2), "2024-01-02T00:00:00"),
    (sa.DateTime(), "not a date", "not a date"),
    (sa.Date(), "2024-01-02", "2024-01-02"),
    (sa.Date(), datetime(2024, 1, 2), "2024-01-02"),
    (sa.Date(), "2024-13-45", "2024-13-45"),
    (sa.Time(), timedelta(hours=7, minutes=30), "07:30:00"),  # PyMySQL's TIME
    (sa.Time(), "07:30:00", "07:30:00"),
    (sa.Time(), "late", "late"),
    (sa.JSON(), '{"b": 1, "a": [1, 2]}', '{"a":[1,2],"b":1}'),
    (sa.JSON(), {"a": [1, 2], "b": 1}, '{"a":[1,2],"b":1}'),  # psycopg parses JSON
    (sa.JSON(), "{not json", "{not json"),
    (sa.LargeBinary(), b"\x00\xff", "00ff"),
    (sa.Text(), None, None),
    (sa.Text(), ["x"], '["x"]'),
]


@pytest.mark.parametrize("column_type, value, text", CANONICAL_CASES)
def test_every_spelling_of_a_value_becomes_one_canonical_text(
    column_type: Any, value: Any, text: Optional[str]
) -> None:
    assert normaliser_for(column_type)(value) == text


def test_raw_text_keeps_the_type_visible() -> None:
    assert [raw_text(v) for v in (1, 1.0, "1", True, b"\x01")] == [
        "1",
        "1.0",
        "'1'",
        "True",
        "bytes:01",
    ]
