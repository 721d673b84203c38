"""Bring a pre-snapshot bake-tracker database up to the snapshot schema (``upgrade-schema``).

Databases created before the application's recipe-snapshot feature lack the ``recipe_snapshots``
table, ``production_runs.recipe_snapshot_id`` and ``recipes.base_recipe_id`` / ``variant_name``
/ ``is_production_ready``, with their indexes, check and foreign keys. ``find_missing`` lists
exactly which of those snapshot-era pieces a database lacks; ``plan_upgrade`` turns them into
DDL for the database's backend (``UpgradePlan.sql_script()`` is the offline script ``--dry-run``
shows); ``upgrade_schema`` runs it. Every other table, column and row is left as found, and the
snapshot-era pieces reflect as ``Base.metadata.create_all`` makes them.

Per backend:

* **SQLite** - one ``BEGIN IMMEDIATE`` transaction (SQLite DDL is transactional). SQLite can
  neither add a table-level CHECK or FOREIGN KEY, nor drop a column default, nor place a column,
  so a table that gains columns or constraints is rebuilt by SQLite's documented procedure:
  foreign keys off (outside the transaction), a new table made from the table's *stored*
  definition plus the new pieces, copy, drop, rename, re-create the table's indexes and
  triggers, then ``PRAGMA foreign_key_check`` before commit. Any interruption rolls it all back.
* **PostgreSQL** - one transaction (DDL is transactional): ``ALTER TABLE ... ADD COLUMN`` etc.
* **MariaDB/MySQL** - DDL commits implicitly, so every step is one atomic statement, and the
  steps are ordered so that each committed prefix is a state ``find_missing`` sees precisely:
  re-running completes an interrupted upgrade.

Existing rows get the models' default in a new NOT NULL column (``is_production_ready`` =
false, as the application creates recipes): through the copy on SQLite, through a temporary
server default dropped again on PostgreSQL and MariaDB. So the final column has no server
default, like the models; a default left by an interrupted MariaDB run is itself a gap.
"""

from __future__ import annotations

import re
import shlex
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, NamedTuple, Optional, Union

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import AddConstraint, CreateIndex, CreateTable
from sqlalchemy.sql.compiler import DDLCompiler
from sqlalchemy.sql.schema import ColumnCollectionConstraint

from .database import (
    ForeignKeysError,
    describe_db_error,
    foreign_keys_off,
    mask_password,
    read_only,
    write_transaction,
)
from .errors import EXIT_FAILED, BackfillError, LockedError, SchemaMissingError
from .locking import DEFAULT_LOCK_TIMEOUT_S, MAX_LOCK_TIMEOUT_S, migration_lock
from .models import SNAPSHOT_ERA_COLUMNS, Base, pre_snapshot_metadata

__all__ = [
    "DEFAULT_LOCK_TIMEOUT_S",
    "REBUILD_PREFIX",
    "GapKind",
    "SchemaGap",
    "SchemaUpgradeError",
    "UpgradePlan",
    "UpgradeReport",
    "UpgradeStep",
    "describe_gaps",
    "find_missing",
    "missing_schema_message",
    "plan_upgrade",
    "require_snapshot_schema",
    "split_table_definitions",
    "upgrade_command",
    "upgrade_schema",
]

Bind = Union[Engine, Connection]
OnStep = Callable[["UpgradeStep"], object]
Backup = Callable[[], object]
GapKind = Literal["table", "column", "default", "index", "check", "unique", "foreign_key"]

# A SQLite rebuild fills this table, then gives it the original table's name.
REBUILD_PREFIX = "_snapshot_backfill_new_"
_MARIADB_LOCK_WAIT_TIMEOUT = 1205
_POSTGRES_LOCK_NOT_AVAILABLE = "55P03"


class SchemaUpgradeError(BackfillError):
    """The upgrade cannot proceed or a statement failed; the message says what was kept."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class SchemaGap:
    """One snapshot-era piece the database lacks: a table, column, index or constraint.

    ``name`` is the table, column, index or constraint name (``None`` for an unnamed
    constraint), ``columns`` what an index or constraint covers, ``detail`` the table and
    columns a foreign key refers to.
    """

    kind: GapKind
    table: str
    name: Optional[str] = None
    columns: tuple[str, ...] = ()
    detail: str = ""

    def describe(self) -> str:
        """Name the missing piece for a human, e.g. ``column recipes.variant_name``."""
        columns = ", ".join(self.columns)
        if self.kind == "table":
            return f"table {self.table}"
        if self.kind == "column":
            return f"column {self.table}.{self.name}"
        if self.kind == "default":
            return f"server default left on {self.table}.{self.name} (the models have none)"
        if self.kind == "index":
            return f"index {self.name} on {self.table} ({columns})"
        if self.kind == "check":
            return f"check constraint {self.name} on {self.table}"
        if self.kind == "unique":
            return f"unique constraint on {self.table} ({columns})"
        return f"foreign key {self.table} ({columns}) -> {self.detail}"


@dataclass(frozen=True)
class UpgradeStep:
    """One step of the upgrade: its SQL, and the gaps it closes.

    On MariaDB a step is exactly one statement, so it commits atomically; on SQLite and
    PostgreSQL every step runs in the one transaction of the upgrade.
    """

    number: int
    total: int
    description: str
    statements: tuple[str, ...]
    gaps: tuple[SchemaGap, ...]
    rebuilds_table: bool = False


@dataclass(frozen=True)
class UpgradePlan:
    """The ordered steps that bring one database to the snapshot schema (none if current)."""

    backend: str
    gaps: tuple[SchemaGap, ...]
    steps: tuple[UpgradeStep, ...]
    transactional: bool

    @property
    def already_current(self) -> bool:
        """Tell whether the database already has every snapshot-era piece."""
        return not self.steps

    def sql_script(self) -> str:
        """Render the plan as the SQL script it runs, transaction control included."""
        lines = [f"-- snapshot-backfill upgrade-schema ({self.backend})"]
        if self.already_current:
            lines.append("-- the database already has the snapshot schema: nothing to do")
            return "\n".join(lines) + "\n"
        if self.backend == "sqlite":
            # SQLite ignores foreign_keys inside a transaction: it goes off before BEGIN.
            lines += ["PRAGMA foreign_keys = OFF;", "BEGIN IMMEDIATE;"]
        elif self.transactional:
            lines.append("BEGIN;")
        else:
            lines.append(
                "-- MariaDB/MySQL DDL commits implicitly: each step commits on its own, and "
                "re-running upgrade-schema completes an interrupted upgrade"
            )
        for step in self.steps:
            lines += ["", f"-- step {step.number}/{step.total}: {step.description}"]
            lines += [f"{statement};" for statement in step.statements]
        lines.append("")
        if self.backend == "sqlite":
            lines += [
                "-- must report no violation beyond those the database had before",
                "PRAGMA foreign_key_check;",
                "COMMIT;",
                "PRAGMA foreign_keys = ON;",
            ]
        elif self.transactional:
            lines.append("COMMIT;")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class UpgradeReport:
    """What ``upgrade_schema`` did, or on a dry run would do (``plan``).

    ``backup`` is what the ``backup`` callable returned (``None`` if none ran);
    ``foreign_key_violations_kept`` counts SQLite foreign-key violations the database had
    before the upgrade and still has (the upgrade neither adds nor repairs any).
    """

    plan: UpgradePlan
    dry_run: bool
    steps_executed: tuple[UpgradeStep, ...] = ()
    backup: object = None
    foreign_key_violations_kept: int = 0

    @property
    def already_current(self) -> bool:
        """Tell whether the database already had the snapshot schema (nothing to do)."""
        return self.plan.already_current


# --- what the snapshot feature added, derived from the models -------------------------------


@dataclass(frozen=True)
class _TableTarget:
    """The snapshot-era pieces of one model table (all of it for a new table)."""

    table: sa.Table
    new_table: bool
    columns: tuple[sa.Column[Any], ...]
    indexes: tuple[sa.Index, ...]
    checks: tuple[sa.CheckConstraint, ...]
    uniques: tuple[sa.UniqueConstraint, ...]
    foreign_keys: tuple[sa.ForeignKeyConstraint, ...]


def _name(item: Union[sa.Constraint, sa.Index]) -> Optional[str]:
    """Return the explicit name of a constraint or index, ``None`` if the database picks it."""
    return item.name if isinstance(item.name, str) else None


def _snapshot_era_targets() -> tuple[_TableTarget, ...]:
    """Diff the models against ``pre_snapshot_metadata()``: what the snapshot feature added."""
    old = pre_snapshot_metadata()
    targets = []
    for table in Base.metadata.sorted_tables:
        constraints = sorted(table.constraints, key=lambda c: c._creation_order)
        checks = [c for c in constraints if isinstance(c, sa.CheckConstraint)]
        uniques = [c for c in constraints if isinstance(c, sa.UniqueConstraint)]
        foreign_keys = [c for c in constraints if isinstance(c, sa.ForeignKeyConstraint)]
        indexes = sorted(table.indexes, key=lambda i: _name(i) or "")
        before = old.tables.get(table.name)
        if before is None:
            targets.append(
                _TableTarget(
                    table,
                    True,
                    tuple(table.columns),
                    tuple(indexes),
                    tuple(checks),
                    tuple(uniques),
                    tuple(foreign_keys),
                )
            )
            continue
        new_columns = set(SNAPSHOT_ERA_COLUMNS.get(table.name, ()))
        old_indexes = {_name(i) for i in before.indexes}
        old_checks = {_name(c) for c in before.constraints if isinstance(c, sa.CheckConstraint)}
        old_uniques = {
            frozenset(c.columns.keys())
            for c in before.constraints
            if isinstance(c, sa.UniqueConstraint)
        }
        target = _TableTarget(
            table,
            False,
            tuple(c for c in table.columns if c.name in new_columns),
            tuple(i for i in indexes if _name(i) not in old_indexes),
            tuple(c for c in checks if _name(c) not in old_checks),
            tuple(c for c in uniques if frozenset(c.columns.keys()) not in old_uniques),
            tuple(c for c in foreign_keys if set(c.column_keys) & new_columns),
        )
        if target.columns or target.indexes or target.checks or target.uniques:
            targets.append(target)
    return tuple(targets)


_TARGETS = _snapshot_era_targets()
_NEW_TABLES = frozenset(t.table.name for t in _TARGETS if t.new_table)
# Tables the upgrade alters or points foreign keys at: they must exist before it.
_REQUIRED_TABLES = tuple(
    sorted(
        (
            {t.table.name for t in _TARGETS if not t.new_table}
            | {fk.referred_table.name for t in _TARGETS for fk in t.foreign_keys}
        )
        - _NEW_TABLES
    )
)


def _target(table_name: str) -> _TableTarget:
    return next(t for t in _TARGETS if t.table.name == table_name)


def _ddl_compiler(dialect: Dialect) -> DDLCompiler:
    """Make a DDL compiler that renders single clauses (column specs, constraints)."""
    # No statement: only its helper methods are used, as Alembic does.
    return dialect.ddl_compiler(dialect, None)  # type: ignore[arg-type]


def _applies(constraint: sa.Constraint, dialect: Dialect) -> bool:
    """Tell whether ``create_all`` emits ``constraint`` on ``dialect`` (honours ``ddl_if``)."""
    # The test DDLCompiler.create_table_constraints applies (SQLAlchemy has no public one),
    # minus the "added by ALTER" mark an earlier AddConstraint may have left on the model.
    saved = constraint._create_rule
    constraint._create_rule = None
    try:
        return bool(constraint._should_create_for_compiler(_ddl_compiler(dialect)))
    finally:
        constraint._create_rule = saved


def _referred(fk: sa.ForeignKeyConstraint) -> tuple[str, tuple[str, ...]]:
    return fk.referred_table.name, tuple(element.column.name for element in fk.elements)


# --- detection -------------------------------------------------------------------------------


@contextmanager
def _connection(bind: Bind) -> Iterator[Connection]:
    """Use a connection as it is; for an engine, a transaction the database keeps read-only."""
    if isinstance(bind, Connection):
        yield bind
        return
    with read_only(bind) as conn:
        yield conn


def find_missing(bind: Bind) -> list[SchemaGap]:
    """List the snapshot-era tables, columns, defaults, indexes and constraints the database lacks.

    Only what the snapshot feature added is examined. A missing ``recipe_snapshots`` is one
    gap (its indexes and constraints come with it). A constraint counts as present whatever
    its name where the database names it (foreign keys, unique constraints). ``bind`` may be
    an engine (read in a read-only transaction) or a connection (read as it is, e.g. inside
    the caller's transaction).
    """
    with _connection(bind) as conn:
        return _find_missing(conn)


def _find_missing(conn: Connection) -> list[SchemaGap]:
    inspector = sa.inspect(conn)
    existing = {name.lower() for name in inspector.get_table_names()}
    gaps: list[SchemaGap] = []
    for target in _TARGETS:
        table = target.table.name
        if table.lower() not in existing:
            if target.new_table:
                gaps.append(SchemaGap("table", table, table))
            continue  # a missing older table is _require_base_tables' to report
        columns = {c["name"].lower(): c for c in inspector.get_columns(table)}
        for column in target.columns:
            found = columns.get(column.name.lower())
            if found is None:
                gaps.append(SchemaGap("column", table, column.name))
            elif not target.new_table and column.server_default is None and found.get("default"):
                gaps.append(SchemaGap("default", table, column.name))
        indexes = inspector.get_indexes(table)
        index_names = {i["name"] for i in indexes}
        gaps.extend(
            SchemaGap("index", table, _name(i), tuple(c.name for c in i.columns))
            for i in target.indexes
            if _name(i) not in index_names
        )
        checks = [c for c in target.checks if _applies(c, conn.dialect)]
        if checks:
            check_names = {c["name"] for c in inspector.get_check_constraints(table)}
            gaps.extend(
                SchemaGap("check", table, _name(c)) for c in checks if _name(c) not in check_names
            )
        if target.uniques:
            # MariaDB reflects a unique constraint as a unique index: either one counts.
            unique_sets = {
                frozenset(c.lower() for c in u["column_names"])
                for u in inspector.get_unique_constraints(table)
            } | {
                frozenset(c.lower() for c in i["column_names"] if c)
                for i in indexes
                if i.get("unique")
            }
            for unique in target.uniques:
                cols = tuple(unique.columns.keys())
                if frozenset(c.lower() for c in cols) not in unique_sets:
                    gaps.append(SchemaGap("unique", table, _name(unique), cols))
        if target.foreign_keys:
            reflected = {
                (
                    tuple(c.lower() for c in fk["constrained_columns"]),
                    fk["referred_table"].lower(),
                    tuple(c.lower() for c in fk["referred_columns"]),
                )
                for fk in inspector.get_foreign_keys(table)
            }
            for fk in target.foreign_keys:
                referred_table, referred_columns = _referred(fk)
                key = (
                    tuple(c.lower() for c in fk.column_keys),
                    referred_table.lower(),
                    tuple(c.lower() for c in referred_columns),
                )
                if key not in reflected:
                    detail = f"{referred_table} ({', '.join(referred_columns)})"
                    cols = tuple(fk.column_keys)
                    gaps.append(SchemaGap("foreign_key", table, _name(fk), cols, detail))
    return gaps


def describe_gaps(gaps: Sequence[SchemaGap]) -> list[str]:
    """Describe each gap in one line, in detection order (for messages and reports)."""
    return [gap.describe() for gap in gaps]


def upgrade_command(database_url: str) -> str:
    """Spell the command that upgrades ``database_url`` (password masked, shell-quoted)."""
    url = shlex.quote(mask_password(database_url))
    return f"snapshot-backfill upgrade-schema --database-url {url}"


def missing_schema_message(gaps: Sequence[SchemaGap], database_url: str) -> str:
    """Say what the database lacks and the exact command that adds it (for ``plan``/``run``)."""
    return (
        "the database predates the recipe-snapshot schema; it lacks "
        + "; ".join(describe_gaps(gaps))
        + f". Bring it up to date first with: {upgrade_command(database_url)}"
        + " (add --dry-run to see the SQL without running it)"
    )


def require_snapshot_schema(bind: Bind, database_url: str) -> None:
    """Raise ``SchemaMissingError`` naming every gap and the upgrade command, if there are any.

    ``database_url`` is the URL as the user gave it (it goes into the command, masked).
    """
    with _connection(bind) as conn:
        _require_base_tables(conn)
        gaps = _find_missing(conn)
    if gaps:
        raise SchemaMissingError(missing_schema_message(gaps, database_url), describe_gaps(gaps))


def _require_base_tables(conn: Connection) -> None:
    existing = {name.lower() for name in sa.inspect(conn).get_table_names()}
    missing = [name for name in _REQUIRED_TABLES if name not in existing]
    if missing:
        raise SchemaMissingError(
            f"not a bake-tracker database: it has no table {', '.join(missing)} "
            "(upgrade-schema only adds what the recipe-snapshot feature added to an existing "
            "bake-tracker database; check --database-url)",
            [f"table {name}" for name in missing],
        )


# --- planning --------------------------------------------------------------------------------


class _Draft(NamedTuple):
    """A step before numbering."""

    description: str
    statements: list[str]
    gaps: list[SchemaGap]
    rebuilds_table: bool = False


def plan_upgrade(bind: Bind) -> UpgradePlan:
    """Plan the DDL that adds every missing snapshot-era piece, for this database's backend.

    With an engine, planning runs in a transaction the database itself keeps read-only.
    Raises ``SchemaMissingError`` if the tables the upgrade builds on do not exist.
    """
    with _connection(bind) as conn:
        return _plan(conn)


def _plan(conn: Connection) -> UpgradePlan:
    _require_base_tables(conn)
    gaps = _find_missing(conn)
    backend = conn.dialect.name
    if backend == "sqlite":
        drafts = _sqlite_drafts(conn, gaps)
    elif backend in ("postgresql", "mysql", "mariadb"):
        drafts = _alter_drafts(conn, gaps)
    else:
        raise SchemaUpgradeError(f"upgrade-schema does not support the {backend} backend")
    steps = tuple(
        UpgradeStep(
            number,
            len(drafts),
            d.description,
            tuple(d.statements),
            tuple(d.gaps),
            d.rebuilds_table,
        )
        for number, d in enumerate(drafts, 1)
    )
    transactional = backend in ("sqlite", "postgresql")
    return UpgradePlan(backend, tuple(gaps), steps, transactional)


def _ddl(element: Any, dialect: Dialect) -> str:
    return str(element.compile(dialect=dialect)).strip()


def _add_constraint_ddl(constraint: sa.Constraint, dialect: Dialect) -> str:
    """Render ``ALTER TABLE ... ADD CONSTRAINT`` without altering the model's constraint.

    Constructing ``AddConstraint`` marks its constraint "not part of CREATE TABLE": on our
    shared models that would silently drop it from every later ``create_all`` in the process.
    """
    saved = constraint._create_rule
    try:
        return _ddl(AddConstraint(constraint), dialect)
    finally:
        constraint._create_rule = saved


def _gaps_of(gaps: Sequence[SchemaGap], table: str, *kinds: str) -> list[SchemaGap]:
    return [g for g in gaps if g.table == table and g.kind in kinds]


def _constraint_for(target: _TableTarget, gap: SchemaGap) -> sa.Constraint:
    if gap.kind == "check":
        return next(c for c in target.checks if _name(c) == gap.name)
    pool: Sequence[ColumnCollectionConstraint]
    pool = target.uniques if gap.kind == "unique" else target.foreign_keys
    return next(c for c in pool if tuple(c.columns.keys()) == gap.columns)


def _index_draft(target: _TableTarget, gap: SchemaGap, dialect: Dialect) -> _Draft:
    index = next(i for i in target.indexes if _name(i) == gap.name)
    return _Draft(
        f"create index {gap.name} on {gap.table}", [_ddl(CreateIndex(index), dialect)], [gap]
    )


def _fill_value(conn: Connection, column: sa.Column[Any]) -> Optional[str]:
    """Give the SQL literal existing rows get in a new NOT NULL column: the models' default.

    ``None`` when the models have no scalar default and the table is empty (nothing to fill).
    """
    default = column.default
    if isinstance(default, sa.ColumnDefault) and default.is_scalar:
        literal = sa.literal(default.arg, column.type)
        return str(literal.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    table = conn.dialect.identifier_preparer.quote(column.table.name)
    if conn.exec_driver_sql(f"SELECT 1 FROM {table} LIMIT 1").first() is not None:
        raise SchemaUpgradeError(
            f"cannot add NOT NULL column {column.table.name}.{column.name}: the table has rows "
            "and the models give no default to fill them with"
        )
    return None


def _new_table_drafts(dialect: Dialect, gaps: Sequence[SchemaGap]) -> list[_Draft]:
    """Create each missing table as create_all does, then its indexes one by one."""
    drafts = []
    for gap in gaps:
        if gap.kind == "table":
            target = _target(gap.table)
            create = _ddl(CreateTable(target.table), dialect)
            drafts.append(_Draft(f"create table {gap.table}", [create], [gap]))
            drafts += [
                _Draft(
                    f"create index {index.name} on {gap.table}",
                    [_ddl(CreateIndex(index), dialect)],
                    [],
                )
                for index in target.indexes
            ]
    return drafts


def _alter_drafts(conn: Connection, gaps: Sequence[SchemaGap]) -> list[_Draft]:
    """Plan PostgreSQL/MariaDB steps, one statement each, in an order safe to interrupt.

    New tables, then per table its columns (a NOT NULL one with a temporary default that fills
    existing rows), the default's removal, indexes, checks and unique constraints; foreign keys
    last, so that each finds its referred table and column, and on MariaDB its index, already
    there (otherwise MariaDB adds an index of its own, which create_all never leaves behind).
    """
    dialect = conn.dialect
    mariadb = dialect.name in ("mysql", "mariadb")
    preparer = dialect.identifier_preparer
    compiler = _ddl_compiler(dialect)
    drafts = _new_table_drafts(dialect, gaps)
    fk_drafts = [
        # create_all adds a use_alter key (one side of a cycle) after CREATE TABLE; so do we.
        _Draft(
            f"add foreign key {fk.name} on {fk.table.name}", [_add_constraint_ddl(fk, dialect)], []
        )
        for gap in gaps
        if gap.kind == "table" and dialect.supports_alter
        for fk in _target(gap.table).foreign_keys
        if fk.use_alter
    ]
    for target in _TARGETS:
        name = target.table.name
        quoted = preparer.format_table(target.table)
        column_gaps = _gaps_of(gaps, name, "column")
        default_gaps = _gaps_of(gaps, name, "default")
        filled: list[str] = []
        if column_gaps:
            present = {c["name"].lower() for c in sa.inspect(conn).get_columns(name)}
            order = [c.name for c in target.table.columns]
            clauses = []
            for gap in column_gaps:
                column = target.table.c[str(gap.name)]
                fill = None if column.nullable else _fill_value(conn, column)
                spec = _column_spec(compiler, column, fill)
                if mariadb:
                    before = [c for c in order[: order.index(column.name)] if c.lower() in present]
                    spec += f" AFTER {preparer.quote(before[-1])}" if before else " FIRST"
                present.add(column.name.lower())
                clauses.append(f"ADD COLUMN {spec}")
                if fill is not None:
                    filled.append(column.name)
            names = ", ".join(str(g.name) for g in column_gaps)
            plural = "s" if len(column_gaps) > 1 else ""
            drafts.append(
                _Draft(
                    f"add column{plural} {names} to {name}",
                    [f"ALTER TABLE {quoted} " + ", ".join(clauses)],
                    column_gaps,
                )
            )
        for column_name in filled + [str(g.name) for g in default_gaps]:
            drop = f"ALTER TABLE {quoted} ALTER COLUMN {preparer.quote(column_name)} DROP DEFAULT"
            closes = [g for g in default_gaps if g.name == column_name]
            drafts.append(
                _Draft(f"drop the server default of {name}.{column_name}", [drop], closes)
            )
        drafts += [_index_draft(target, gap, dialect) for gap in _gaps_of(gaps, name, "index")]
        for gap in _gaps_of(gaps, name, "check", "unique", "foreign_key"):
            draft = _Draft(
                f"add {gap.describe()}",
                [_add_constraint_ddl(_constraint_for(target, gap), dialect)],
                [gap],
            )
            (fk_drafts if gap.kind == "foreign_key" else drafts).append(draft)
    return drafts + fk_drafts


def _column_spec(compiler: DDLCompiler, column: sa.Column[Any], fill: Optional[str]) -> str:
    """Render a column definition as create_all does, plus ``DEFAULT fill`` if given."""
    if fill is None:
        return str(compiler.get_column_specification(column))
    # A detached twin carries the temporary server default; the model stays as it is.
    twin = sa.Column(
        column.name, column.type, nullable=column.nullable, server_default=sa.text(fill)
    )
    sa.Table(column.table.name, sa.MetaData(), twin)
    return str(compiler.get_column_specification(twin))


# --- SQLite: table rebuilds ------------------------------------------------------------------


def _sqlite_drafts(conn: Connection, gaps: Sequence[SchemaGap]) -> list[_Draft]:
    """Plan SQLite steps: new tables, rebuilds, then the missing indexes.

    A table gaining columns or constraints is rebuilt; the rebuild re-creates the indexes the
    table had, so the snapshot-era ones come after it.
    """
    dialect = conn.dialect
    drafts = _new_table_drafts(dialect, gaps)
    index_drafts = []
    analyzed = _sqlite_has_table(conn, "sqlite_stat1")
    for target in _TARGETS:
        name = target.table.name
        rebuild_gaps = _gaps_of(gaps, name, "column", "default", "check", "unique", "foreign_key")
        if rebuild_gaps:
            drafts.append(_sqlite_rebuild(conn, target, rebuild_gaps, analyzed=analyzed))
        index_drafts += [_index_draft(target, g, dialect) for g in _gaps_of(gaps, name, "index")]
    return drafts + index_drafts


def _sqlite_has_table(conn: Connection, name: str) -> bool:
    found = conn.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).first()
    return found is not None


def _sqlite_rebuild(
    conn: Connection, target: _TableTarget, gaps: Sequence[SchemaGap], *, analyzed: bool
) -> _Draft:
    """Plan the rebuild of one table: its stored definition plus the missing pieces.

    Built from the table's *stored* CREATE TABLE text, not from our models, so what the
    application has and we do not model (``production_runs``' key to ``events``, say)
    survives verbatim. Snapshot-era columns go where create_all puts them.
    """
    dialect = conn.dialect
    quote = dialect.identifier_preparer.quote
    compiler = _ddl_compiler(dialect)
    name = target.table.name
    temp = REBUILD_PREFIX + name
    if _sqlite_has_table(conn, temp):
        raise SchemaUpgradeError(
            f"table {temp} exists: it is not the application's, nor left by upgrade-schema "
            "(whose rebuilds are transactional); drop it, then re-run"
        )
    stored = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).scalar_one()
    definitions, tail = split_table_definitions(stored)
    # table_xinfo hidden=0: the stored columns (generated ones cannot be copied into).
    copied = [
        row[1] for row in conn.exec_driver_sql(f"PRAGMA table_xinfo({quote(name)})") if row[6] == 0
    ]
    replaced = {str(g.name).lower() for g in gaps if g.kind == "default"}
    added = [target.table.c[str(g.name)] for g in gaps if g.kind == "column"]
    insert_columns = [quote(c) for c in copied]
    select_values = [quote(c) for c in copied]
    for column in added:
        fill = None if column.nullable else _fill_value(conn, column)
        if fill is not None:
            insert_columns.append(quote(column.name))
            select_values.append(fill)

    era = {c.name.lower() for c in target.columns}
    era_definitions: dict[str, str] = {}
    columns: list[str] = []
    constraints: list[str] = []
    for definition in definitions:
        column_name = "" if _is_table_constraint(definition) else _definition_name(definition)
        if not column_name:
            constraints.append(definition)
        elif column_name.lower() not in era:
            columns.append(definition)
        elif column_name.lower() in replaced:
            spec = compiler.get_column_specification(target.table.c[column_name.lower()])
            era_definitions[column_name.lower()] = str(spec)
        else:
            era_definitions[column_name.lower()] = definition
    for column in added:
        era_definitions[column.name.lower()] = str(compiler.get_column_specification(column))
    order = [c.name.lower() for c in target.table.columns]
    for column_name in (c for c in order if c in era_definitions):
        present = [_definition_name(d).lower() for d in columns]
        position = order.index(column_name)
        before = [c for c in order[:position] if c in present]
        after = [c for c in order[position + 1 :] if c in present]
        at = present.index(before[-1]) + 1 if before else present.index(after[0]) if after else None
        columns.insert(len(columns) if at is None else at, era_definitions[column_name])
    constraints += [
        str(compiler.process(_constraint_for(target, g)))
        for g in gaps
        if g.kind in ("check", "unique", "foreign_key")
    ]
    body = ", \n\t".join(columns + constraints)
    statements = [
        f"CREATE TABLE {quote(temp)} (\n\t{body}\n){tail}",
        f"INSERT INTO {quote(temp)} ({', '.join(insert_columns)}) "
        f"SELECT {', '.join(select_values)} FROM {quote(name)}",
        f"DROP TABLE {quote(name)}",
        # The legacy rename leaves views and triggers that name this table alone: they are
        # valid again once the new table has the name. The modern rename re-parses them
        # against the dropped table and fails.
        "PRAGMA legacy_alter_table = ON",
        f"ALTER TABLE {quote(temp)} RENAME TO {quote(name)}",
        "PRAGMA legacy_alter_table = OFF",
    ]
    # Indexes (bar the automatic ones of UNIQUE/PRIMARY KEY) and triggers went with the table.
    statements += [
        sql
        for (sql,) in conn.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger') "
            "AND sql IS NOT NULL ORDER BY type, rowid",
            (name,),
        )
    ]
    if analyzed:
        # DROP TABLE took the table's planner statistics with it; query plans rely on them.
        statements.append(f"ANALYZE {quote(name)}")
    what = [
        f"add column {g.name}" if g.kind == "column" else f"add {g.describe()}"
        for g in gaps
        if g.kind != "default"
    ]
    what += [f"drop the server default of {name}.{column}" for column in sorted(replaced)]
    return _Draft(f"rebuild table {name} ({'; '.join(what)})", statements, list(gaps), True)


_CONSTRAINT_START = re.compile(r"(CONSTRAINT|PRIMARY|UNIQUE|CHECK|FOREIGN)\b", re.IGNORECASE)
_QUOTES = {'"': '"', "`": "`", "[": "]", "'": "'"}


_LEADING_COMMENTS = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)


def _without_leading_comments(definition: str) -> str:
    match = _LEADING_COMMENTS.match(definition)
    return definition[match.end() :] if match else definition


def _is_table_constraint(definition: str) -> bool:
    return _CONSTRAINT_START.match(_without_leading_comments(definition)) is not None


def _definition_name(definition: str) -> str:
    """Read the column name a column definition starts with, unquoted."""
    definition = _without_leading_comments(definition)
    closing = _QUOTES.get(definition[:1])
    if closing is None:
        return re.split(r"[\s(]", definition, maxsplit=1)[0]
    end = 1
    while True:
        end = definition.index(closing, end)
        if closing != "]" and definition[end + 1 : end + 2] == closing:
            end += 2  # a doubled quote stands for itself
            continue
        return definition[1:end].replace(closing * 2, closing)


def split_table_definitions(create_table_sql: str) -> tuple[list[str], str]:
    """Split a stored SQLite CREATE TABLE into its column and constraint definitions, and tail.

    Commas inside parentheses, string literals, quoted identifiers and comments do not split.
    The tail is what follows the closing parenthesis (``WITHOUT ROWID``, ``STRICT``). A
    definition that ends in a ``--`` comment keeps a newline, so a comma after it survives.
    """
    sql = create_table_sql
    depth = 0
    start = -1
    definitions: list[str] = []
    line_comment_last = False
    i = 0
    while i < len(sql):
        ch = sql[i]
        if ch in _QUOTES:
            closing = _QUOTES[ch]
            i += 1
            while i < len(sql) and not (
                sql[i] == closing and (closing == "]" or sql[i + 1 : i + 2] != closing)
            ):
                i += 2 if sql[i] == closing else 1  # skip a doubled quote whole
            line_comment_last = False
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = len(sql) if end < 0 else end
            line_comment_last = True
            continue
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = len(sql) if end < 0 else end + 1
        elif ch == "(":
            depth += 1
            if depth == 1 and start < 0:
                start = i + 1
        elif ch == ")":
            depth -= 1
            if depth == 0 and start >= 0:
                definitions.append(_definition_text(sql[start:i], line_comment_last))
                return [d for d in definitions if d], sql[i + 1 :]
        elif ch == "," and depth == 1:
            definitions.append(_definition_text(sql[start:i], line_comment_last))
            start = i + 1
        elif not ch.isspace():
            line_comment_last = False
        i += 1
    raise SchemaUpgradeError(f"cannot parse the stored table definition {sql[:80]!r}")


def _definition_text(text: str, ends_in_line_comment: bool) -> str:
    text = text.strip()
    return text + "\n" if ends_in_line_comment and text else text


def _sqlite_fk_violations(conn: Connection) -> Counter[tuple[str, str]]:
    """Count foreign-key violations per (child table, parent table).

    Counted rather than listed by rowid and key number: a rebuilt table's keys are renumbered.
    A violation the database already had (a run whose recipe was deleted while keys were off)
    is the backfill's business, not a reason to refuse the upgrade.
    """
    return Counter((row[0], row[2]) for row in conn.exec_driver_sql("PRAGMA foreign_key_check"))


# --- running ---------------------------------------------------------------------------------


def upgrade_schema(
    engine: Engine,
    *,
    dry_run: bool = False,
    on_step: Optional[OnStep] = None,
    backup: Optional[Backup] = None,
    lock_timeout: Optional[float] = DEFAULT_LOCK_TIMEOUT_S,
) -> UpgradeReport:
    """Add every missing snapshot-era piece, or with ``dry_run`` only plan it.

    Detection runs read-only first: a dry run, or a database already current, never takes a
    write lock and never calls ``backup``. Otherwise ``backup()`` is called once (the CLI passes
    the SQLite pre-write backup; its result is ``report.backup``), before the upgrade takes its
    write lock, so the backup may read or lock the database as it needs. Then the upgrade takes
    the migration lock of every writing command (``locking.migration_lock``: run, rollback
    and upgrade-schema exclude each other; ``lock_timeout`` bounds the wait) and its own
    (SQLite ``BEGIN IMMEDIATE``), plans again under it, and calls ``on_step(step)`` before
    running each step.
    An exception from ``on_step`` interrupts the upgrade as a crash would.

    ``lock_timeout`` (seconds, ``None`` to wait forever) bounds the wait for a table lock on
    PostgreSQL/MariaDB: DDL queued behind an idle application transaction would otherwise
    stall, and stall every query queued behind it. SQLite waits its busy timeout.

    Raises ``LockedError`` if another migrator holds the migration lock or a writer a table,
    ``SchemaMissingError`` for a database that is not a bake-tracker one,
    ``SchemaUpgradeError`` if a step fails.
    On SQLite and PostgreSQL a failure or interruption leaves the database as it was; on
    MariaDB the steps before it stay committed and a re-run completes the upgrade.
    """
    plan = plan_upgrade(engine)
    if dry_run or plan.already_current:
        return UpgradeReport(plan=plan, dry_run=dry_run)
    backup_result = backup() if backup is not None else None
    # The migration lock of run and rollback: an upgrade never runs beside either.
    lock_wait = lock_timeout if lock_timeout is not None else MAX_LOCK_TIMEOUT_S
    with migration_lock(engine, lock_wait):
        if engine.dialect.name == "sqlite":
            report = _upgrade_sqlite(engine, on_step)
        elif engine.dialect.name == "postgresql":
            report = _upgrade_postgresql(engine, on_step, lock_timeout)
        else:
            report = _upgrade_mariadb(engine, on_step, lock_timeout)
    return replace(report, backup=backup_result)


def _run_steps(
    conn: Connection, plan: UpgradePlan, on_step: Optional[OnStep]
) -> tuple[UpgradeStep, ...]:
    done: list[UpgradeStep] = []
    for step in plan.steps:
        if on_step is not None:
            on_step(step)
        for statement in step.statements:
            try:
                conn.exec_driver_sql(statement)
            except DBAPIError as exc:
                raise _step_failure(exc, plan, step, statement) from exc
        done.append(step)
    return tuple(done)


def _step_failure(
    exc: DBAPIError, plan: UpgradePlan, step: UpgradeStep, statement: str
) -> BackfillError:
    where = f"step {step.number}/{step.total} ({step.description})"
    if plan.transactional:
        kept = "nothing was changed (rolled back)"
    elif step.number > 1:
        kept = f"steps 1-{step.number - 1} are committed; re-run upgrade-schema to complete"
    else:
        kept = "nothing was changed"
    if _is_lock_timeout(exc):
        return LockedError(
            f"{where} could not lock its table ({describe_db_error(exc)}): the application or "
            f"another session is using it; {kept}; retry when it is idle"
        )
    return SchemaUpgradeError(
        f"{where} failed: {describe_db_error(exc)}; {kept}. Statement: {statement.splitlines()[0]}"
    )


def _is_lock_timeout(exc: DBAPIError) -> bool:
    orig = exc.orig
    if isinstance(orig, sqlite3.OperationalError):
        return "locked" in str(orig) or "busy" in str(orig)
    if getattr(orig, "sqlstate", None) == _POSTGRES_LOCK_NOT_AVAILABLE:
        return True
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    return bool(args) and args[0] == _MARIADB_LOCK_WAIT_TIMEOUT


def _upgrade_sqlite(engine: Engine, on_step: Optional[OnStep]) -> UpgradeReport:
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        if raw is None:  # pragma: no cover - a checked-out connection always has one
            raise SchemaUpgradeError("the SQLite connection is closed")
        # With keys on, DROP TABLE recipes would cascade into recipe_ingredients;
        # foreign_key_check stands guard before commit instead.
        try:
            with foreign_keys_off(conn):
                try:
                    with write_transaction(conn):
                        plan = _plan(conn)
                        if plan.already_current:  # another upgrade finished meanwhile
                            return UpgradeReport(plan=plan, dry_run=False)
                        before = _sqlite_fk_violations(conn)
                        done = _run_steps(conn, plan, on_step)
                        after = _sqlite_fk_violations(conn)
                        new = after - before
                        if new:
                            broken = ", ".join(f"{c} -> {p}: {n} rows" for (c, p), n in new.items())
                            raise SchemaUpgradeError(
                                f"the upgrade would break foreign keys ({broken}); "
                                "nothing was changed (rolled back)"
                            )
                except DBAPIError as exc:
                    if _is_lock_timeout(exc):
                        raise LockedError(
                            f"the database is locked ({describe_db_error(exc)}): the "
                            "application or another migrator is writing; nothing was changed; "
                            "retry when idle"
                        ) from exc
                    raise SchemaUpgradeError(
                        f"the schema upgrade failed: {describe_db_error(exc)}; nothing was changed"
                    ) from exc
        except ForeignKeysError as exc:
            raise SchemaUpgradeError(
                f"could not switch SQLite foreign keys off ({exc}); nothing was changed"
            ) from exc
        finally:
            _restore_sqlite_connection(conn, raw)
    return UpgradeReport(
        plan=plan,
        dry_run=False,
        steps_executed=done,
        foreign_key_violations_kept=sum(after.values()),
    )


def _restore_sqlite_connection(conn: Connection, raw: Any) -> None:
    """Give the pool back its connection with the modern ALTER (foreign keys: see above)."""
    try:
        raw.execute("PRAGMA legacy_alter_table = OFF")
    except sqlite3.Error:
        conn.invalidate()


def _upgrade_postgresql(
    engine: Engine,
    on_step: Optional[OnStep],
    lock_timeout: Optional[float],
) -> UpgradeReport:
    with engine.connect() as conn, conn.begin():
        if lock_timeout is not None:
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, int(lock_timeout * 1000))}")
        plan = _plan(conn)
        if plan.already_current:  # another upgrade finished meanwhile
            return UpgradeReport(plan=plan, dry_run=False)
        done = _run_steps(conn, plan, on_step)
    return UpgradeReport(plan=plan, dry_run=False, steps_executed=done)


def _upgrade_mariadb(
    engine: Engine,
    on_step: Optional[OnStep],
    lock_timeout: Optional[float],
) -> UpgradeReport:
    with engine.connect() as conn:
        # Every DDL statement commits anyway; autocommit keeps SQLAlchemy from pretending.
        conn.execution_options(isolation_level="AUTOCOMMIT")
        saved_timeout = conn.exec_driver_sql("SELECT @@SESSION.lock_wait_timeout").scalar()
        try:
            if lock_timeout is not None:
                seconds = max(1, int(lock_timeout))
                conn.exec_driver_sql(f"SET SESSION lock_wait_timeout = {seconds}")
            plan = _plan(conn)
            if plan.already_current:  # another upgrade finished meanwhile
                return UpgradeReport(plan=plan, dry_run=False)
            done = _run_steps(conn, plan, on_step)
        finally:
            conn.exec_driver_sql(f"SET SESSION lock_wait_timeout = {int(str(saved_timeout))}")
    return UpgradeReport(plan=plan, dry_run=False, steps_executed=done)
