"""Streaming digests of a database's tables: one SHA-256 and a row count per table.

``table_digests(engine)`` reads each table in primary-key order through a server-side cursor
(PostgreSQL, MariaDB; SQLite's cursor is lazy anyway) and hashes the rows as they arrive, so
memory stays flat whatever the number of rows. Values are normalised so that the same content
gives the same digest on SQLite, PostgreSQL and MariaDB:

- date/time values (objects or the text SQLite stores) as ISO 8601, a timezone-aware value
  converted to UTC and written without an offset;
- numbers (integers, ``Decimal``, floats, booleans) as the shortest plain decimal: ``1``,
  ``1.5``, ``0.1``; a boolean is ``0`` or ``1``, ``1.0000`` (a NUMERIC(10,4)) is ``1``;
- bytes as hex, JSON documents re-serialised with sorted keys, anything else as ``str``.

The columns are hashed by name (in sorted order), so the same columns created in another order
give the same digest. Two digests are equal when the tables hold the same rows; which tables
differ between two moments::

    before = table_digests(engine)
    ...
    changed_tables(before, table_digests(engine))   # e.g. ["production_runs"]

Rows are ordered by the primary key (all columns in a table without one), as the server sorts
them: for tables keyed by text, a backend's collation decides the order, and with it the digest.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Optional, Union

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from snapshot_backfill.database import read_only

# Rows fetched from the server per round trip: large enough to be fast, small enough that the
# memory they take does not matter (a row of ours is a few hundred bytes).
BATCH_ROWS = 2000

Cell = Optional[str]
Source = Union[Engine, Connection]


@dataclass(frozen=True)
class TableDigest:
    """A table's row count and the SHA-256 of its columns' names and normalised rows."""

    rows: int
    sha256: str


@dataclass(frozen=True)
class TableShape:
    """What a table's digest is read with: columns (sorted by name), key, normaliser per column."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    normalisers: tuple[Callable[[Any], Cell], ...]


def table_digests(
    source: Source, tables: Optional[Iterable[str]] = None, *, batch_rows: int = BATCH_ROWS
) -> dict[str, TableDigest]:
    """Digest each of ``tables`` (default: every table the database has), read-only.

    An engine is read in one read-only transaction (a consistent snapshot on the servers);
    a connection is read as it is, in whatever transaction it has.
    """
    if isinstance(source, Engine):
        with read_only(source) as conn:
            return _digests(conn, tables, batch_rows)
    return _digests(source, tables, batch_rows)


def changed_tables(
    before: Mapping[str, TableDigest], after: Mapping[str, TableDigest]
) -> list[str]:
    """The tables whose digest differs, or that exist at only one of the two moments; sorted."""
    return sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))


def table_shapes(conn: Connection, tables: Optional[Iterable[str]] = None) -> list[TableShape]:
    """How each table is read (reflected once for all tables); sorted by table name."""
    inspector = sa.inspect(conn)
    names = sorted(inspector.get_table_names() if tables is None else set(tables))
    all_columns = {k[1]: v for k, v in inspector.get_multi_columns().items()}
    all_pks = {k[1]: v for k, v in inspector.get_multi_pk_constraint().items()}
    shapes = []
    for name in names:
        if name in all_columns:
            reflected = all_columns[name]
            key = tuple(all_pks[name].get("constrained_columns") or ())
        else:  # SQLite's internal tables (sqlite_sequence) are not in the multi-table answers
            reflected = inspector.get_columns(name)
            key = ()
        by_name = sorted(reflected, key=lambda c: c["name"])
        shapes.append(
            TableShape(
                name=name,
                columns=tuple(c["name"] for c in by_name),
                key=key or tuple(c["name"] for c in reflected),
                normalisers=tuple(normaliser_for(c["type"]) for c in by_name),
            )
        )
    return shapes


def stream_rows(
    conn: Connection, shape: TableShape, *, batch_rows: int = BATCH_ROWS
) -> Iterator[tuple[Cell, ...]]:
    """Yield the table's rows in key order, each as its normalised cells (``shape.columns``)."""
    quote = conn.dialect.identifier_preparer.quote
    select = (
        f"SELECT {', '.join(quote(c) for c in shape.columns)} FROM {quote(shape.name)} "
        f"ORDER BY {', '.join(quote(c) for c in shape.key)}"
    )
    result = conn.execution_options(yield_per=batch_rows).exec_driver_sql(select)
    try:
        normalisers = shape.normalisers
        for row in result:
            yield tuple(n(v) for n, v in zip(normalisers, row))
    finally:
        result.close()


def digest_table(
    conn: Connection, shape: TableShape, *, batch_rows: int = BATCH_ROWS
) -> TableDigest:
    """One table's digest, hashing rows as they are read."""
    h = hashlib.sha256()
    h.update(_encode(shape.columns))
    count = 0
    for cells in stream_rows(conn, shape, batch_rows=batch_rows):
        h.update(_encode(cells))
        count += 1
    return TableDigest(rows=count, sha256=h.hexdigest())


def _digests(
    conn: Connection, tables: Optional[Iterable[str]], batch_rows: int
) -> dict[str, TableDigest]:
    return {
        shape.name: digest_table(conn, shape, batch_rows=batch_rows)
        for shape in table_shapes(conn, tables)
    }


def _encode(cells: Sequence[Cell]) -> bytes:
    # One JSON array a line: unambiguous (None is null, text is quoted and escaped).
    return json.dumps(cells, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


# --- normalising values --------------------------------------------------------------------


def normaliser_for(column_type: Any) -> Callable[[Any], Cell]:
    """The function that turns a driver's value of a column of this type into canonical text.

    The column's type matters where a backend stores one thing as another: SQLite keeps a
    DATETIME as text and a BOOLEAN as an integer; a JSON document may arrive parsed or as text.
    """
    if isinstance(column_type, sa.DateTime):
        return _as_datetime
    if isinstance(column_type, sa.Date):
        return _as_date
    if isinstance(column_type, sa.Time):
        return _as_time
    if isinstance(column_type, (sa.Numeric, sa.Boolean, sa.Integer)):
        return _as_number
    if isinstance(column_type, sa.JSON):
        return _as_json
    return canonical


def canonical(value: Any) -> Cell:
    """Canonical text for a value, by its Python type (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float, Decimal)):
        return _number(value)
    if isinstance(value, datetime):
        return _datetime(value)
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (dict, list)):
        return _json(value)
    return str(value)


def _number(value: Union[bool, int, float, Decimal]) -> str:
    if isinstance(value, (bool, int)):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            return repr(value)  # nan, inf, -inf
        value = Decimal(repr(value))  # the shortest text that reads back as this float
    elif not value.is_finite():
        return str(value).lower()
    if value == 0:
        return "0"  # also -0 and 0E-4
    return format(value.normalize(), "f")


def _as_number(value: Any) -> Cell:
    if isinstance(value, str):
        try:
            return _number(Decimal(value.strip()))
        except InvalidOperation:
            return value  # SQLite lets any column hold text: keep it as it is
    return canonical(value)


def _datetime(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.isoformat()


def _parse_iso(text: str, parse: Callable[[str], Any]) -> Any:
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return parse(text)
    except ValueError:
        return None


def _as_datetime(value: Any) -> Cell:
    if isinstance(value, str):
        parsed = _parse_iso(value, datetime.fromisoformat)
        if parsed is None:
            return value
        return _datetime(parsed)
    if isinstance(value, date) and not isinstance(value, datetime):
        return _datetime(datetime.combine(value, time()))
    return canonical(value)


def _as_date(value: Any) -> Cell:
    if isinstance(value, str):
        parsed = _parse_iso(value, date.fromisoformat)
        return value if parsed is None else parsed.isoformat()
    if isinstance(value, datetime) and value.time() == time():
        return value.date().isoformat()
    return canonical(value)


def _as_time(value: Any) -> Cell:
    if isinstance(value, timedelta):  # PyMySQL reads a TIME as the time since midnight
        return (datetime.min + value).time().isoformat()
    if isinstance(value, str):
        parsed = _parse_iso(value, time.fromisoformat)
        return value if parsed is None else parsed.isoformat()
    return canonical(value)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _as_json(value: Any) -> Cell:
    if isinstance(value, (str, bytes)):
        try:
            return _json(json.loads(value))
        except ValueError:
            return canonical(value)
    return canonical(value)
