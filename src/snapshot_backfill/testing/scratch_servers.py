"""Copy tables between two PostgreSQL or two MariaDB databases: definitions, rows, triggers.

Used by ``scratch`` (which see): the definitions are the source's own (PostgreSQL: reflected,
``pg_get_triggerdef``/``pg_get_functiondef``; MariaDB: ``SHOW CREATE TABLE``/``TRIGGER``), the
rows are streamed in chunks through a server-side cursor, and the triggers are created after
the rows are in, so that they act only on what the backfill then writes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

if TYPE_CHECKING:
    from .scratch import Scratch

# Records in the scratch's marker what a copy creates: (kind, name) pairs.
Mark = Callable[[Connection, Sequence[tuple[str, Any]]], None]


def stream_table(
    reader: Connection, table: str, columns: Sequence[str], chunk_rows: int
) -> Iterator[list[tuple[Any, ...]]]:
    """Yield a table's rows in chunks, through a server-side cursor (memory flat)."""
    quote = reader.dialect.identifier_preparer.quote
    result = reader.execution_options(yield_per=chunk_rows).exec_driver_sql(
        f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(table)}"
    )
    try:
        for partition in result.partitions(chunk_rows):
            yield [tuple(row) for row in partition]
    finally:
        result.close()


def _insertable(reader: Connection, table: str) -> list[str]:
    """The columns a copy writes: all but generated ones (the server computes those)."""
    return [c["name"] for c in sa.inspect(reader).get_columns(table) if not c.get("computed")]


def _copy_rows(reader: Connection, writer: Connection, table: str, chunk_rows: int) -> int:
    columns = _insertable(reader, table)
    statement = sa.table(table, *(sa.column(c) for c in columns)).insert()
    copied = 0
    for chunk in stream_table(reader, table, columns, chunk_rows):
        writer.execute(statement, [dict(zip(columns, row)) for row in chunk])
        writer.commit()
        copied += len(chunk)
    return copied


# --- PostgreSQL -----------------------------------------------------------------------------

_PG_TRIGGERS = """
SELECT c.relname AS table_name, t.tgname AS name, pg_get_triggerdef(t.oid) AS definition,
       t.tgenabled AS enabled, p.oid AS function_oid, pn.nspname AS function_schema,
       p.oid::regprocedure::text AS function_signature
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_proc p ON p.oid = t.tgfoid
JOIN pg_namespace pn ON pn.oid = p.pronamespace
WHERE NOT t.tgisinternal AND n.nspname = current_schema() AND c.relname = ANY(:tables)
ORDER BY c.relname, t.tgname
"""


def copy_postgresql(
    reader: Connection,
    target: Engine,
    scratch: Scratch,
    wanted: Sequence[str],
    *,
    chunk_rows: int,
    mark: Mark,
) -> None:
    """Create ``wanted`` (and what their keys refer to) in ``target`` and copy their rows."""
    metadata = sa.MetaData()
    # resolve_fks: the tables the foreign keys refer to are reflected (and copied) too.
    metadata.reflect(bind=reader, only=list(wanted), resolve_fks=True)
    tables = [t for t in metadata.tables.values() if t.schema is None]
    scratch.tables = sorted(t.name for t in tables)
    serials: list[tuple[str, str]] = []
    with target.connect() as writer:
        with writer.begin():
            mark(writer, [("table", t.name) for t in tables])
        for table in tables:
            for column in table.columns:
                default = column.server_default
                if default is not None and "nextval(" in str(getattr(default, "arg", "")):
                    # The source's sequence is not ours: SERIAL makes the copy's own, and its
                    # position is set from the source's once the rows are in.
                    column.server_default = None
                    serials.append((table.name, column.name))
                elif column.identity is not None:
                    serials.append((table.name, column.name))
                if isinstance(column.type, sa.Enum) and column.type.name:
                    with writer.begin():
                        mark(writer, [("type", column.type.name)])
                    column.type.create(writer, checkfirst=True)
                    writer.commit()
            with writer.begin():
                # Keys are added after the rows, NOT VALID: the source's rows are copied as they
                # are (a run whose recipe was deleted with the keys off stays an orphan).
                writer.execute(sa.schema.CreateTable(table, include_foreign_key_constraints=[]))
        for table in tables:
            scratch.rows_copied += _copy_rows(reader, writer, table.name, chunk_rows)
        with writer.begin():
            for table in tables:
                for index in table.indexes:
                    writer.execute(sa.schema.CreateIndex(index))
                for key in table.foreign_key_constraints:
                    ddl = sa.schema.AddConstraint(key).compile(dialect=writer.dialect)
                    writer.exec_driver_sql(f"{ddl} NOT VALID")
            for table_name, column_name in serials:
                sequence = reader.execute(
                    sa.text("SELECT pg_get_serial_sequence(:t, :c)"),
                    {"t": table_name, "c": column_name},
                ).scalar()
                if sequence is None:
                    continue
                last, called = reader.exec_driver_sql(
                    f"SELECT last_value, is_called FROM {sequence}"
                ).one()
                writer.execute(
                    sa.text("SELECT setval(pg_get_serial_sequence(:t, :c), :v, :called)"),
                    {"t": table_name, "c": column_name, "v": last, "called": called},
                )
        triggers = reader.execute(sa.text(_PG_TRIGGERS), {"tables": scratch.tables}).all()
        functions: dict[int, str] = {}
        for trigger in triggers:
            if trigger.function_schema not in ("pg_catalog", "information_schema"):
                functions.setdefault(trigger.function_oid, trigger.function_signature)
        with writer.begin():
            mark(writer, [("function", signature) for signature in functions.values()])
            for oid in functions:
                definition = reader.execute(
                    sa.text("SELECT pg_get_functiondef(:oid)"), {"oid": oid}
                ).scalar_one()
                writer.exec_driver_sql(definition)
            for trigger in triggers:
                writer.exec_driver_sql(trigger.definition)
                if trigger.enabled == "D":
                    quote = writer.dialect.identifier_preparer.quote
                    writer.exec_driver_sql(
                        f"ALTER TABLE {quote(trigger.table_name)} DISABLE TRIGGER "
                        f"{quote(trigger.name)}"
                    )
                scratch.triggers.append(f"{trigger.table_name}.{trigger.name}")


# --- MariaDB / MySQL ------------------------------------------------------------------------

_DEFINER = re.compile(r"\bDEFINER\s*=\s*(`[^`]*`|'[^']*'|[^@\s]+)@(`[^`]*`|'[^']*'|\S+)\s+", re.I)


def _closure(reader: Connection, start: Sequence[str]) -> list[str]:
    """``start`` and every table their foreign keys refer to, transitively (same database)."""
    inspector = sa.inspect(reader)
    seen: list[str] = []
    todo = list(start)
    while todo:
        table = todo.pop(0)
        if table in seen:
            continue
        seen.append(table)
        for key in inspector.get_foreign_keys(table):
            if key.get("referred_schema") in (None, reader.engine.url.database):
                todo.append(key["referred_table"])
    return seen


def copy_mariadb(
    reader: Connection,
    target: Engine,
    scratch: Scratch,
    wanted: Sequence[str],
    *,
    chunk_rows: int,
    mark: Mark,
) -> None:
    """Create ``wanted`` (and what their keys refer to) in ``target`` and copy their rows."""
    tables = _closure(reader, wanted)
    scratch.tables = sorted(tables)
    quote = reader.dialect.identifier_preparer.quote
    definitions = [reader.exec_driver_sql(f"SHOW CREATE TABLE {quote(t)}").one()[1] for t in tables]
    trigger_names = list(
        reader.execute(
            sa.text(
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
                "WHERE EVENT_OBJECT_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE IN :tables "
                "ORDER BY EVENT_OBJECT_TABLE, EVENT_MANIPULATION, ACTION_TIMING, ACTION_ORDER"
            ).bindparams(sa.bindparam("tables", expanding=True)),
            {"tables": tables},
        ).scalars()
    )
    triggers = [
        reader.exec_driver_sql(f"SHOW CREATE TRIGGER {quote(name)}").one()._mapping
        for name in trigger_names
    ]
    with target.connect() as writer:
        with writer.begin():
            mark(writer, [("table", t) for t in tables])
        # The rows are copied as they are: a run whose recipe was deleted with the keys off
        # stays an orphan in the copy (the keys are not checked when they come back on).
        writer.exec_driver_sql("SET SESSION FOREIGN_KEY_CHECKS = 0")
        writer.exec_driver_sql(
            "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_AUTO_VALUE_ON_ZERO')"
        )
        for definition in definitions:
            writer.exec_driver_sql(definition)
        for table in tables:
            scratch.rows_copied += _copy_rows(reader, writer, table, chunk_rows)
        for trigger in triggers:
            # Defined by the rehearsal's user: another definer would need SUPER/SET USER.
            writer.exec_driver_sql("SET SESSION sql_mode = %s", (trigger["sql_mode"],))
            writer.exec_driver_sql(_DEFINER.sub("", trigger["SQL Original Statement"], count=1))
            scratch.triggers.append(str(trigger["Trigger"]))
        writer.exec_driver_sql("SET SESSION FOREIGN_KEY_CHECKS = 1")
        writer.commit()
