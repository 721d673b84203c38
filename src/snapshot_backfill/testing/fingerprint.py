"""Fingerprint a whole database: every table hashed as it is read, with readable diffs.

``take(engine)`` reads every table the database has (found by reflection, so the application's
other tables and anything the migrator leaves behind count too, as do SQLite's internal
``sqlite_sequence``/``sqlite_stat*`` tables), the columns of each, and the names of its indexes.
Each table is streamed once (``digest``): its digest is computed as the rows arrive, and its
rows are kept for a row-level diff unless ``keep_rows=False`` (then memory stays flat however
large the database). Values are the driver's own, not SQLAlchemy's conversions: on SQLite a
DATETIME is the text stored, so a timestamp rewritten in another spelling is a difference.

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

fails with the tables, rows and columns that differ, not just two hashes: the diff is computed
only for the tables whose digest differs. ``diff_databases(a, b)`` compares two live databases
(a source and its scratch copy) the same way, reading rows only of the tables that differ.

No test-only dependency: the migrator's commands may use this on a user's database.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from snapshot_backfill.database import read_only
from snapshot_backfill.journal import JOURNAL_TABLE_NAME
from snapshot_backfill.testing.digest import (
    TableDigest,
    TableShape,
    digest_rows,
    raw_text,
    stream_rows,
    table_shapes,
)

# Columns whose values differ between two databases built the same way (client-side defaults).
VOLATILE_COLUMNS = frozenset({"uuid", "created_at", "updated_at"})
# The journal's columns that say *when* and *which invocation*, not *what*.
VOLATILE_JOURNAL_COLUMNS = frozenset({"id", "run_token", "previous_updated_at", "linked_at"})
SQLITE_INTERNAL_TABLES = ("sqlite_sequence", "sqlite_stat1", "sqlite_stat4")
MAX_DIFF_LINES = 60

Row = tuple[str, ...]


@dataclass(frozen=True, eq=False)
class TableImage:
    """One table: column names, key columns, index names, its digest and (if kept) its rows.

    Two images are equal when their columns, key, indexes and digest are: the rows follow
    from the digest, so they need not have been kept.
    """

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    indexes: tuple[str, ...]
    rows: tuple[Row, ...]
    digest: TableDigest
    rows_kept: bool = True

    def _identity(self) -> tuple[Any, ...]:
        return (self.name, self.columns, self.key, self.indexes, self.digest)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TableImage):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    @property
    def row_count(self) -> int:
        return self.digest.rows

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
        """A SHA-256 over every table's name, columns, key, index names and row digest."""
        h = hashlib.sha256()
        for name in sorted(self.tables):
            h.update(repr(self.tables[name]._identity()).encode())
        return h.hexdigest()

    def row_count(self, table: str) -> int:
        return self.tables[table].row_count if table in self.tables else 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Fingerprint):
            return NotImplemented
        return self.normalized == other.normalized and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def changed_tables(self, other: Fingerprint) -> list[str]:
        """The tables that differ in ``other`` (added and removed ones included), sorted."""
        names = set(self.tables) | set(other.tables)
        return sorted(n for n in names if self.tables.get(n) != other.tables.get(n))

    def diff(
        self,
        other: Fingerprint,
        limit: int = MAX_DIFF_LINES,
        tables: Optional[Iterable[str]] = None,
    ) -> str:
        """Describe, line by line, how ``other`` differs from this fingerprint (in ``tables``)."""
        lines = list(_diff_lines(self, other, None if tables is None else set(tables)))
        if len(lines) > limit:
            lines = [*lines[:limit], f"... and {len(lines) - limit} more lines"]
        return "\n".join(lines) if lines else "(no difference)"

    def summary(self) -> str:
        """``table: N rows`` for each table, for messages."""
        return ", ".join(f"{t}: {self.tables[t].row_count}" for t in sorted(self.tables))


Source = Union[Engine, Connection]


def take(
    source: Source,
    *,
    normalized: bool = False,
    keep_rows: bool = True,
    tables: Optional[Iterable[str]] = None,
) -> Fingerprint:
    """Read the tables of the database behind ``source`` (read-only) into a Fingerprint.

    ``tables`` limits it to those (default: every table, SQLite's internal ones included);
    ``keep_rows=False`` keeps only the digests, so memory does not grow with the rows (a
    normalized fingerprint always keeps them: it is compared row by row).
    """
    if isinstance(source, Engine):
        with read_only(source) as conn:
            return _take(conn, normalized, keep_rows or normalized, tables)
    return _take(source, normalized, keep_rows or normalized, tables)


def diff_databases(
    expected: Source,
    found: Source,
    *,
    tables: Optional[Iterable[str]] = None,
    limit: int = MAX_DIFF_LINES,
) -> tuple[list[str], str]:
    """Compare two live databases: the tables that differ, and a row-level diff of those.

    Both are first digested table by table (memory flat); rows are read only from the tables
    whose digest differs. ``tables`` limits the comparison to those.
    """
    wanted = None if tables is None else list(tables)
    changed = take(expected, keep_rows=False, tables=wanted).changed_tables(
        take(found, keep_rows=False, tables=wanted)
    )
    if not changed:
        return [], "(no difference)"
    return changed, take(expected, tables=changed).diff(take(found, tables=changed), limit)


def _table_names(conn: Connection, tables: Optional[Iterable[str]]) -> list[str]:
    if tables is not None:
        wanted = set(tables)
        names = set(sa.inspect(conn).get_table_names()) & wanted
    else:
        wanted = set(SQLITE_INTERNAL_TABLES)
        names = set(sa.inspect(conn).get_table_names())
    if conn.dialect.name == "sqlite":
        present = {
            r[0]
            for r in conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'sqlite%'"
            )
        }
        names |= {n for n in SQLITE_INTERNAL_TABLES if n in present and n in wanted}
    return sorted(names)


def _take(
    conn: Connection, normalized: bool, keep_rows: bool, tables: Optional[Iterable[str]]
) -> Fingerprint:
    inspector = sa.inspect(conn)
    shapes = table_shapes(conn, _table_names(conn, tables), raw=True)
    all_indexes = {k[1]: v for k, v in inspector.get_multi_indexes().items()}
    indexes = {
        shape.name: tuple(sorted(i["name"] or "" for i in all_indexes.get(shape.name, ())))
        for shape in shapes
    }
    if normalized:
        images = _normalized_images(conn, shapes, indexes)
    else:
        images = {s.name: _read_image(conn, s, indexes[s.name], keep_rows) for s in shapes}
    return Fingerprint(backend=conn.dialect.name, normalized=normalized, tables=images)


def _read_image(
    conn: Connection, shape: TableShape, indexes: tuple[str, ...], keep_rows: bool
) -> TableImage:
    kept: list[Row] = []

    def rows() -> Iterator[Row]:
        for cells in stream_rows(conn, shape):
            row = tuple(str(c) for c in cells)  # raw_text never gives None
            if keep_rows:
                kept.append(row)
            yield row

    digest = digest_rows(shape.columns, rows())
    return TableImage(
        name=shape.name,
        columns=shape.columns,
        key=shape.key,
        indexes=indexes,
        rows=tuple(sorted(kept)),  # as text: the order two fingerprints compare in
        digest=digest,
        rows_kept=keep_rows,
    )


def _normalized_images(
    conn: Connection, shapes: list[TableShape], indexes: Mapping[str, tuple[str, ...]]
) -> dict[str, TableImage]:
    quote = conn.dialect.identifier_preparer.quote
    raw: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], list[tuple]]] = {}
    for shape in shapes:
        select = (
            f"SELECT {', '.join(quote(c) for c in shape.columns)} FROM {quote(shape.name)} "
            f"ORDER BY {', '.join(quote(c) for c in shape.key)}"
        )
        rows = [tuple(r) for r in conn.exec_driver_sql(select)]
        raw[shape.name] = (shape.columns, shape.key, indexes[shape.name], rows)
    images = {}
    for name, (columns, key, table_indexes, rows) in _normalize(raw).items():
        canonical_rows = tuple(sorted(tuple(raw_text(v) for v in row) for row in rows))
        images[name] = TableImage(
            name=name,
            columns=columns,
            key=key,
            indexes=table_indexes,
            rows=canonical_rows,
            digest=digest_rows(columns, canonical_rows),
        )
    return images


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


def _diff_lines(a: Fingerprint, b: Fingerprint, only: Optional[set[str]] = None) -> Iterable[str]:
    if a.normalized != b.normalized:
        yield "(comparing a normalized fingerprint with a raw one)"
    for name in sorted(set(a.tables) | set(b.tables)):
        if only is not None and name not in only:
            continue
        if name not in b.tables:
            yield f"table {name}: removed (had {a.tables[name].row_count} rows)"
            continue
        if name not in a.tables:
            table = b.tables[name]
            columns = ", ".join(table.columns)
            yield f"table {name}: added ({table.row_count} rows, columns {columns})"
            for row in table.rows[:5]:
                yield f"    + {_show(table.columns, row)}"
            continue
        if a.tables[name] != b.tables[name]:  # only where the digests (or the shape) differ
            yield from _table_diff(a.tables[name], b.tables[name])


def _table_diff(a: TableImage, b: TableImage) -> Iterable[str]:
    if a.columns != b.columns:
        yield f"table {a.name}: columns {list(a.columns)} -> {list(b.columns)}"
        return
    if a.indexes != b.indexes:
        yield f"table {a.name}: indexes {list(a.indexes)} -> {list(b.indexes)}"
    if a.digest == b.digest:
        return
    if not (a.rows_kept and b.rows_kept):
        yield (
            f"table {a.name}: the rows differ ({a.row_count} rows -> {b.row_count}); "
            "rows were not kept (take(..., keep_rows=False))"
        )
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
    empty = TableImage(table, (), (), (), (), TableDigest(rows=0, sha256=""))
    before = a.tables.get(table, empty).keyed()
    after = b.tables.get(table, empty).keyed()
    return {
        "added": {k for k in after if k not in before},
        "removed": {k for k in before if k not in after},
        "changed": {k for k in before if k in after and before[k] != after[k]},
    }
