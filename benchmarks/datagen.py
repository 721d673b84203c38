"""Generate production-shaped bake-tracker databases fast, with set-based SQL.

The shape (deterministic, so two generations of one N are identical row for row):

- 50 recipes with 8 ingredient lines each (200 ingredients), one finished unit per recipe;
  some archived, some variants, notes of realistic length;
- N production runs spread evenly over two years (``produced_at`` grows with ``id``);
- ~5% orphaned: ``recipe_id`` names one of three recipes that are gone (written with foreign
  keys off, as the application's history did);
- ~10% already linked to a snapshot the application wrote;
- ~1% with a snapshot row that exists while ``recipe_snapshot_id`` is still NULL.

The small tables go through SQLAlchemy Core (a few hundred rows); ``production_runs`` and
``recipe_snapshots`` are filled by one ``INSERT ... SELECT`` over a number series each.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Optional

from sqlalchemy import NullPool, create_engine, insert, inspect, text
from sqlalchemy.engine import Connection, Engine

from snapshot_backfill.database import (
    check_connection,
    display_url,
    foreign_keys_off,
    open_engine,
    resolve_url,
    sqlite_path,
)
from snapshot_backfill.errors import BadInputError
from snapshot_backfill.models import (
    Base,
    YieldMode,
    finished_units,
    ingredients,
    recipe_ingredients,
    recipes,
)
from snapshot_backfill.payload import build_payloads
from snapshot_backfill.sample_data import ExpectedCounts

RECIPES = 50
KINDS = ("flour", "sugar", "butter", "egg")
LINES_PER_RECIPE = 8
INGREDIENTS = 200
MISSING_RECIPE_IDS = (1001, 1002, 1003)
START = datetime(2023, 1, 1)
TWO_YEARS_S = 2 * 365 * 24 * 3600

# The run classes, as predicates on the run id i (disjoint: 7 mod 20 is odd and 3 mod 10 and
# 51 mod 100 never meet it or each other).
ORPHAN_SQL = "{i} % 20 = 7"
LINKED_SQL = "{i} % 10 = 3"
SNAPSHOT_UNLINKED_SQL = "{i} % 100 = 51"


def expected(n: int) -> ExpectedCounts:
    """What a plan of a freshly generated database must count: each class of run among ids
    1..n (closed forms of the predicates above)."""

    def count(modulus: int, rest: int) -> int:
        return (n - rest) // modulus + 1 if n >= rest else 0

    orphaned = count(20, 7)
    linked = count(10, 3)
    link_existing = count(100, 51)
    return ExpectedCounts(
        total_runs=n,
        already_linked=linked,
        link_existing=link_existing,
        to_migrate=n - orphaned - linked - link_existing,
        orphaned=orphaned,
    )


def _small_tables(conn: Connection) -> None:
    conn.execute(
        insert(ingredients),
        [
            {
                "id": k,
                "uuid": f"00000000-0000-4000-8001-{k:012d}",
                "created_at": START,
                "updated_at": START,
                "display_name": f"Ingredient {k:03d} ({KINDS[k % len(KINDS)]})",
                "slug": None if k % 17 == 0 else f"ingredient-{k:03d}",
                "hierarchy_level": 2,
                "category": ["Flour", "Sugar", "Dairy", "Eggs", "Spices"][k % 5],
                "is_packaging": False,
                "description": "A baking ingredient used across several recipes.",
                "date_added": START,
                "last_modified": START,
            }
            for k in range(1, INGREDIENTS + 1)
        ],
    )
    conn.execute(
        insert(recipes),
        [
            {
                "id": r,
                "uuid": f"00000000-0000-4000-8002-{r:012d}",
                "created_at": START,
                "updated_at": START,
                "name": f"Recipe {r:02d}",
                "category": ["Cookies", "Cakes", "Breads", "Pies", "Candy"][r % 5],
                "source": "Family cookbook, p. " + str(10 + r),
                "yield_quantity": 24.0 + r,
                "yield_unit": "cookies",
                "yield_description": "About two dozen, 3 inch",
                "estimated_time_minutes": 30 + r,
                "notes": ("Cream the butter and sugar until fluffy; chill the dough. " * 5)[:300],
                "is_archived": r % 11 == 0,
                "base_recipe_id": r - 1 if r % 9 == 0 else None,
                "variant_name": "Holiday" if r % 9 == 0 else None,
                "is_production_ready": r % 3 != 0,
                "date_added": START,
                "last_modified": START,
            }
            for r in range(1, RECIPES + 1)
        ],
    )
    conn.execute(
        insert(recipe_ingredients),
        [
            {
                "id": (r - 1) * LINES_PER_RECIPE + k + 1,
                "uuid": f"00000000-0000-4000-8003-{(r - 1) * LINES_PER_RECIPE + k + 1:012d}",
                "created_at": START,
                "updated_at": START,
                "recipe_id": r,
                "ingredient_id": (r * 7 + k * 13) % INGREDIENTS + 1,
                "quantity": 0.25 * (k + 1),
                "unit": ["cup", "tsp", "tbsp", "g"][k % 4],
                "notes": "sifted, room temperature" if k % 2 else None,
            }
            for r in range(1, RECIPES + 1)
            for k in range(LINES_PER_RECIPE)
        ],
    )
    conn.execute(
        insert(finished_units),
        [
            {
                "id": r,
                "uuid": f"00000000-0000-4000-8004-{r:012d}",
                "created_at": START,
                "updated_at": START,
                "slug": f"unit-{r:02d}",
                "display_name": f"Unit of recipe {r:02d}",
                "recipe_id": r,
                "yield_mode": YieldMode.DISCRETE_COUNT,
                "items_per_batch": 24,
                "item_unit": "cookie",
                "unit_cost": Decimal("0.5000"),
                "inventory_count": 0,
            }
            for r in range(1, RECIPES + 1)
        ],
    )


class _Dialect:
    """The few SQL spellings that differ between the three backends."""

    def __init__(self, name: str) -> None:
        self.name = name

    def series(self, n: int) -> tuple[str, str]:
        """A (WITH prefix, FROM item) pair yielding i = 1..n."""
        if self.name == "sqlite":
            return (
                f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) ",
                "s",
            )
        if self.name == "postgresql":
            return "", f"generate_series(1, {n}) AS s(i)"
        return "", f"(SELECT seq AS i FROM seq_1_to_{n}) AS s"

    def uuid(self, group: int, i: str) -> str:
        head = f"'00000000-0000-4000-{8000 + group}-'"
        if self.name == "sqlite":
            return f"{head} || printf('%012d', {i})"
        if self.name == "postgresql":
            return f"{head} || lpad(({i})::text, 12, '0')"
        return f"CONCAT({head}, LPAD({i}, 12, '0'))"

    def at(self, seconds: str) -> str:
        """START plus an integer number of seconds, stored as the application stores it."""
        if self.name == "sqlite":
            # SQLAlchemy's SQLite DATETIME text: microseconds always written.
            return (
                f"strftime('%Y-%m-%d %H:%M:%S', '2023-01-01', '+' || ({seconds}) || ' seconds')"
                " || '.000000'"
            )
        if self.name == "postgresql":
            return f"(TIMESTAMP '2023-01-01' + ({seconds}) * INTERVAL '1 second')"
        return f"TIMESTAMPADD(SECOND, {seconds}, '2023-01-01')"

    def produced_seconds(self, n: int) -> str:
        """Seconds after START of run i: N runs spread evenly over two years."""
        if self.name == "postgresql":
            return f"(CAST(i AS BIGINT) * {TWO_YEARS_S} / {n})"
        if self.name == "sqlite":
            return f"(i * {TWO_YEARS_S} / {n})"
        return f"(i * {TWO_YEARS_S} DIV {n})"

    def recipe_of(self, i: str) -> str:
        """A recipe id for run i, mixed so that no run class lands on a few recipes."""
        div = "DIV" if self.name in ("mysql", "mariadb") else "/"
        return f"(1 + ({i} * 37 + {i} {div} 97) % {RECIPES})"


def _big_tables(conn: Connection, n: int) -> None:
    d = _Dialect(conn.dialect.name)
    with_, from_ = d.series(n)
    produced_s = d.produced_seconds(n)
    produced = d.at(produced_s)
    updated = d.at(f"{produced_s} + 3600")
    orphan = ORPHAN_SQL.format(i="i")
    missing = MISSING_RECIPE_IDS
    conn.execute(
        text(
            "INSERT INTO production_runs (id, uuid, created_at, updated_at, recipe_id, "
            "finished_unit_id, event_id, recipe_snapshot_id, num_batches, expected_yield, "
            "actual_yield, produced_at, notes, production_status, loss_quantity, "
            "total_ingredient_cost, per_unit_cost) "
            f"{with_}SELECT i, {d.uuid(5, 'i')}, {produced}, {updated}, "
            f"CASE WHEN {orphan} THEN {missing[0]} + i % {len(missing)} "
            f"ELSE {d.recipe_of('i')} END, {d.recipe_of('i')}, NULL, NULL, "
            "1 + i % 4, 24 * (1 + i % 4), 24 * (1 + i % 4) - i % 3, "
            f"{produced}, CASE WHEN i % 5 = 0 THEN 'Doubled the batch for the market.' "
            "ELSE NULL END, "
            f"'complete', i % 3, 12.5, 0.52 FROM {from_}"
        )
    )
    # The snapshots the application wrote itself, with the real payload of their recipe.
    payloads = build_payloads(conn, range(1, RECIPES + 1)).payloads
    conn.exec_driver_sql(
        "CREATE TEMPORARY TABLE bench_payloads (recipe_id INTEGER PRIMARY KEY, "
        "recipe_data TEXT NOT NULL, ingredients_data TEXT NOT NULL)"
    )
    conn.execute(
        text("INSERT INTO bench_payloads VALUES (:r, :rd, :idata)"),
        [{"r": r, "rd": p.recipe_data, "idata": p.ingredients_data} for r, p in payloads.items()],
    )
    snapshot_uuid = d.uuid(6, "r.id")
    has_snapshot = f"({LINKED_SQL.format(i='r.id')} OR {SNAPSHOT_UNLINKED_SQL.format(i='r.id')})"
    conn.execute(
        text(
            "INSERT INTO recipe_snapshots (uuid, created_at, updated_at, recipe_id, "
            "production_run_id, scale_factor, snapshot_date, recipe_data, ingredients_data, "
            f"is_backfilled) SELECT {snapshot_uuid}, r.created_at, r.created_at, r.recipe_id, "
            "r.id, "
            "1.0, r.produced_at, p.recipe_data, p.ingredients_data, "
            f"{'false' if d.name == 'postgresql' else '0'} "
            "FROM production_runs r JOIN bench_payloads p ON p.recipe_id = r.recipe_id "
            f"WHERE {has_snapshot} ORDER BY r.id"
        )
    )
    linked = LINKED_SQL.format(i="production_runs.id")
    conn.execute(
        text(
            "UPDATE production_runs SET recipe_snapshot_id = (SELECT s.id FROM recipe_snapshots s "
            f"WHERE s.production_run_id = production_runs.id) WHERE {linked}"
        )
    )
    conn.exec_driver_sql("DROP TABLE bench_payloads")


def generate(engine: Engine, n: int) -> None:
    """Create the six tables in an empty database and fill them for ``n`` runs."""
    Base.metadata.create_all(engine)
    backend = engine.dialect.name
    # Orphaned runs need the foreign key unchecked, as it was when their recipe went.
    with engine.connect() as conn:
        with foreign_keys_off(conn):
            _small_tables(conn)
            _big_tables(conn, n)
            if backend == "postgresql":
                for table in (
                    "ingredients",
                    "recipes",
                    "recipe_ingredients",
                    "finished_units",
                    "production_runs",
                ):
                    conn.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
            conn.commit()
        if backend == "sqlite":
            # As the application opens it; no ANALYZE: the desktop application never runs it,
            # so the migrator's queries must be planned well without statistics.
            # On the driver's connection: outside any transaction, whatever the engine's hooks.
            raw: Any = conn.connection.driver_connection
            raw.execute("PRAGMA journal_mode = WAL")
        elif backend == "postgresql":
            conn.commit()
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
        else:
            for table in ("production_runs", "recipe_snapshots"):
                conn.exec_driver_sql(f"ANALYZE TABLE {table}").all()
            conn.commit()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python benchmarks/datagen.py DATABASE --runs N``: generate one database."""
    parser = argparse.ArgumentParser(
        prog="datagen.py",
        description="Generate a production-shaped bake-tracker database (the benchmark's) "
        "with N production runs.",
        epilog="example: python benchmarks/datagen.py /tmp/bake-100k.db --runs 100000\n"
        "exit codes: 0 generated; 2 bad input (an existing SQLite file, a database with "
        "tables, an unreachable server): nothing was changed",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "database",
        help="a new SQLite file (path or sqlite:// URL), or an empty server database's URL",
    )
    parser.add_argument(
        "--runs", "-n", type=int, default=10000, help="production runs (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, not {args.runs}")
    try:
        url = resolve_url(args.database)
        if url.get_backend_name() == "sqlite":
            path = sqlite_path(url)
            if path is None or path.exists():
                parser.error(f"{args.database}: a new SQLite file is needed (it is created)")
        check = open_engine(url, create=False) if url.get_backend_name() != "sqlite" else None
        if check is not None:
            try:
                check_connection(check)
                if inspect(check).get_table_names():
                    parser.error(f"{display_url(url)} has tables: an empty database is needed")
            finally:
                check.dispose()
    except BadInputError as exc:
        parser.error(str(exc))
    # A plain engine, as the benchmark's: generate() switches foreign keys off for the orphans.
    engine = create_engine(url, poolclass=NullPool)
    try:
        generate(engine, args.runs)
    finally:
        engine.dispose()
    exp = expected(args.runs)
    print(
        f"{display_url(url)}: {exp.total_runs:,} runs ({exp.already_linked:,} linked, "
        f"{exp.to_migrate:,} to migrate, {exp.link_existing:,} to link, "
        f"{exp.orphaned:,} orphaned)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
