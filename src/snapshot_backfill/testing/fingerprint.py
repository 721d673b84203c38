"""Fingerprint a whole database: every row of every table, ordered and hashed, with readable diffs.

``take(engine)`` reads every table the database has (found by reflection, so the application's
other tables and anything the migrator leaves behind count too, as do SQLite's internal
``sqlite_sequence``/``sqlite_stat*`` tables), the columns of each, and the names of its indexes.
Values are the driver's own, not SQLAlchemy's conversions: on SQLite a DATETIME is the text
stored, so a timestamp rewritten in another spelling is a difference.

``take(engine, normalized=True)`` is for comparing two databases that went through the same
steps differently (an interrupted run resumed vs an uninterrupted one): it drops what cannot be
equal (``uuid``, ``created_at``, ``updated_at``, the journal's run token and timestamps) and
renames what depends on the order of inserts: a ``recipe_snapshots`` row is keyed by its
``production_run_id`` instead of its id (PostgreSQL's sequences move on in a rolled-back batch),
and ``production_runs.recipe_snapshot_id`` becomes "the snapshot of run N".

Comparing::

    before = take(engine)
    plan(engine)
    assert_same(before, take(engine), "plan must change nothing", context={"state": ...})

fails with the tables, rows and columns that differ, not just two hashes.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from snapshot_backfill.journal import JOURNAL_TABLE_NAME

# Columns whose values differ between two databases built the same way (client-side defaults).
VOLATILE_COLUMNS = frozenset({"uuid", "created_at", "updated_at"})
# The journal's columns that say *when* and *which invocation*, not *what*.
VOLATILE_JOURNAL_COLUMNS = frozenset({"id", "run_token", "previous_updated_at", "linked_at"})
SQLITE_INTERNAL_TABLES = ("sqlite_sequence", "sqlite_stat1", "sqlite_stat4")
MAX_DIFF_LINES = 60

Row = tuple[str, ...]


@dataclass(frozen=True)
class TableImage:
    """One table's content: column names, key columns, and every row as canonical text."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    indexes: tuple[str, ...]
    rows: tuple[Row, ...]

    def keyed(self) -> dict[Row, Row]:
        """Rows by their key (the primary key, or the whole row when there is none)."""
        return self._keyed

    @functools.cached_property
    def _keyed(self) -> dict[Row, Row]:
        positions = [self.columns.index(k) for k in self.key]
        out: dict[Row, Row] = {}
        for row in self.rows:
            key = tuple(row[p] for p in positions)
            if key in out:  # a table without a usable key: number duplicate rows
                key = (*key, f"#{sum(1 for k in out if k[: len(self.key)] == key)}")
            out[key] = row
        return out


@dataclass(frozen=True)
class Fingerprint:
    """Every table of a database at one moment; equal fingerprints mean equal databases."""

    backend: str
    normalized: bool
    tables: Mapping[str, TableImage]

    @functools.cached_property
    def digest(self) -> str:
        """A SHA-256 over every table, column, index name and row, in a fixed order."""
        h = hashlib.sha256()
        for name in sorted(self.tables):
            table = self.tables[name]
            h.update(repr((name, table.columns, table.key, table.indexes)).encode())
            for row in table.rows:
                h.update(repr(row).encode())
        return h.hexdigest()

    def row_count(self, table: str) -> int:
        return len(self.tables[table].rows) if table in self.tables else 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Fingerprint):
            return NotImplemented
        return self.normalized == other.normalized and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def diff(self, other: Fingerprint, limit: int = MAX_DIFF_LINES) -> str:
        """Describe, line by line, how ``other`` differs from this fingerprint."""
        lines = list(_diff_lines(self, other))
        if len(lines) > limit:
            lines = [*lines[:limit], f"... and {len(lines) - limit} more lines"]
        return "\n".join(lines) if lines else "(no difference)"

    def summary(self) -> str:
        """``table: N rows`` for each table, for messages."""
        return ", ".join(f"{t}: {len(self.tables[t].rows)}" for t in sorted(self.tables))


Source = Union[Engine, Connection]


def take(source: Source, *, normalized: bool = False) -> Fingerprint:
    """Read every table of the database behind ``source`` (read-only) into a Fingerprint."""
    if isinstance(source, Engine):
        with source.connect() as conn:
            try:
                return _take(conn, normalized)
            finally:
                conn.rollback()
    return _take(source, normalized)


def _take(conn: Connection, normalized: bool) -> Fingerprint:
    inspector = sa.inspect(conn)
    names = list(inspector.get_table_names())
    if conn.dialect.name == "sqlite":
        present = {
            r[0]
            for r in conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'sqlite%'"
            )
        }
        names += [n for n in SQLITE_INTERNAL_TABLES if n in present]
    raw: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], list[tuple]]] = {}
    quote = conn.dialect.identifier_preparer.quote
    # One catalog query per kind for all tables (the get_multi_* API): fast on the servers.
    all_columns = {k[1]: v for k, v in inspector.get_multi_columns().items()}
    all_pks = {k[1]: v for k, v in inspector.get_multi_pk_constraint().items()}
    all_indexes = {k[1]: v for k, v in inspector.get_multi_indexes().items()}
    for name in sorted(names):
        if name in all_columns:
            columns = tuple(c["name"] for c in all_columns[name])
            pk = tuple(all_pks[name].get("constrained_columns") or ())
            indexes = tuple(sorted(i["name"] or "" for i in all_indexes[name]))
        else:  # SQLite's internal tables are not in the multi-table answers
            columns = tuple(c["name"] for c in inspector.get_columns(name))
            pk, indexes = (), ()
        order = ", ".join(quote(c) for c in (pk or columns))
        select = f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(name)}"
        rows = [tuple(r) for r in conn.exec_driver_sql(f"{select} ORDER BY {order}")]
        raw[name] = (columns, pk or columns, indexes, rows)
    if normalized:
        raw = _normalize(raw)
    tables = {
        name: TableImage(
            name=name,
            columns=columns,
            key=key,
            indexes=indexes,
            rows=tuple(sorted(tuple(_canonical(v) for v in row) for row in rows)),
        )
        for name, (columns, key, indexes, rows) in raw.items()
    }
    return Fingerprint(backend=conn.dialect.name, normalized=normalized, tables=tables)


def _canonical(value: Any) -> str:
    # repr keeps the type visible: 1 vs 1.0 vs '1' vs True are different stored values.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"bytes:{bytes(value).hex()}"
    return repr(value)


def _normalize(raw: dict[str, Any]) -> dict[str, Any]:
    snapshot_run: dict[Any, Any] = {}
    if "recipe_snapshots" in raw:
        columns = raw["recipe_snapshots"][0]
        sid, rid = columns.index("id"), columns.index("production_run_id")
        snapshot_run = {row[sid]: row[rid] for row in raw["recipe_snapshots"][3]}

    def as_run(snapshot_id: Any) -> Any:
        if snapshot_id is None:
            return None
        return f"snapshot of run {snapshot_run.get(snapshot_id, f'? (no snapshot {snapshot_id})')}"

    out: dict[str, Any] = {}
    for name, (columns, key, indexes, rows) in raw.items():
        drop = set(VOLATILE_COLUMNS)
        remap: dict[str, Any] = {}
        new_key = key
        if name == "recipe_snapshots":
            drop.add("id")
            new_key = ("production_run_id",)
        elif name == "production_runs":
            remap["recipe_snapshot_id"] = as_run
        elif name == JOURNAL_TABLE_NAME:
            drop |= VOLATILE_JOURNAL_COLUMNS
            remap["snapshot_id"] = as_run
            new_key = ("production_run_id",)
        keep = [i for i, c in enumerate(columns) if c not in drop]
        new_columns = tuple(columns[i] for i in keep)
        if not set(new_key) <= set(new_columns):
            new_key = new_columns
        new_rows = [
            tuple(remap[columns[i]](row[i]) if columns[i] in remap else row[i] for i in keep)
            for row in rows
        ]
        out[name] = (new_columns, new_key, indexes, new_rows)
    return out


# --- comparing ---------------------------------------------------------------------------


def _diff_lines(a: Fingerprint, b: Fingerprint) -> Iterable[str]:
    if a.normalized != b.normalized:
        yield "(comparing a normalized fingerprint with a raw one)"
    for name in sorted(set(a.tables) | set(b.tables)):
        if name not in b.tables:
            yield f"table {name}: removed (had {len(a.tables[name].rows)} rows)"
            continue
        if name not in a.tables:
            table = b.tables[name]
            columns = ", ".join(table.columns)
            yield f"table {name}: added ({len(table.rows)} rows, columns {columns})"
            for row in table.rows[:5]:
                yield f"    + {_show(table.columns, row)}"
            continue
        yield from _table_diff(a.tables[name], b.tables[name])


def _table_diff(a: TableImage, b: TableImage) -> Iterable[str]:
    if a.columns != b.columns:
        yield f"table {a.name}: columns {list(a.columns)} -> {list(b.columns)}"
        return
    if a.indexes != b.indexes:
        yield f"table {a.name}: indexes {list(a.indexes)} -> {list(b.indexes)}"
    if a.rows == b.rows:
        return
    before, after = a.keyed(), b.keyed()
    removed = sorted((k for k in before if k not in after), key=_natural)
    added = sorted((k for k in after if k not in before), key=_natural)
    changed = sorted((k for k in before if k in after and before[k] != after[k]), key=_natural)
    yield (
        f"table {a.name}: {len(changed)} rows changed, {len(added)} added, {len(removed)} removed"
    )
    for k in changed:
        cells = [
            f"{col}: {x} -> {y}" for col, x, y in zip(a.columns, before[k], after[k]) if x != y
        ]
        yield f"    ~ {_show_key(a.key, k)}: {'; '.join(cells)}"
    for k in added:
        yield f"    + {_show(b.columns, after[k])}"
    for k in removed:
        yield f"    - {_show(a.columns, before[k])}"


def _natural(key: Row) -> tuple[tuple[int, Any], ...]:
    """Order keys as their values would sort: 2 before 10 (ids are canonical text here)."""
    return tuple((0, int(v)) if v.lstrip("-").isdigit() else (1, v) for v in key)


def _show_key(key: tuple[str, ...], values: Row) -> str:
    return ", ".join(f"{c}={v}" for c, v in zip(key, values))


def _show(columns: tuple[str, ...], row: Row, width: int = 60) -> str:
    cells = []
    for c, v in zip(columns, row):
        cells.append(f"{c}={v if len(v) <= width else v[: width - 3] + '...'}")
    return ", ".join(cells)


def explain(title: str, context: Optional[Mapping[str, Any]] = None, **blocks: str) -> str:
    """Format a failure: a title, then ``key: value`` context, then titled blocks of text."""
    lines = [title]
    for key, value in (context or {}).items():
        lines.append(f"  {key}: {value}")
    for heading, text in blocks.items():
        lines.append(f"-- {heading.replace('_', ' ')} --")
        lines.extend(f"  {line}" for line in str(text).splitlines())
    return "\n".join(lines)


def assert_same(
    expected: Fingerprint,
    found: Fingerprint,
    title: str,
    context: Optional[Mapping[str, Any]] = None,
) -> None:
    """Fail with a row-level diff (expected -> found) unless the two fingerprints are equal."""
    if expected == found:
        return
    raise AssertionError(
        explain(
            title,
            context,
            differences_expected_to_found=expected.diff(found),
            expected_tables=expected.summary(),
            found_tables=found.summary(),
        )
    )


def changed_rows(a: Fingerprint, b: Fingerprint, table: str) -> dict[str, set[Row]]:
    """The keys of ``table``'s rows that ``b`` added, removed or changed relative to ``a``."""
    empty = TableImage(table, (), (), (), ())
    before = a.tables.get(table, empty).keyed()
    after = b.tables.get(table, empty).keyed()
    return {
        "added": {k for k in after if k not in before},
        "removed": {k for k in before if k not in after},
        "changed": {k for k in before if k in after and before[k] != after[k]},
    }
