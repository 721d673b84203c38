"""The raw-SQL floor: the least work the backfill can be done with, on each backend.

Run as a child process by bench_backfill.py: ``python floor.py URL``; prints one JSON line.
Deliberately no SQLAlchemy (its import alone is a good part of a small run's time): the DB-API
driver, one transaction, each recipe's payload built once in Python into a temporary table,
one ``INSERT ... SELECT`` that creates every missing snapshot (uuid4 made by the server), and
one set-based ``UPDATE`` that links every unlinked run to its snapshot. No batches, no journal,
no lock, no per-row error isolation: the things the migrator pays for and this does not.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote, urlsplit

RECIPE_COLUMNS = (
    "id, name, category, source, yield_quantity, yield_unit, yield_description, "
    "estimated_time_minutes, notes, variant_name, is_production_ready"
)
LINES = (
    "SELECT ri.recipe_id, ri.ingredient_id, i.display_name, i.slug, ri.quantity, ri.unit, "
    "ri.notes FROM recipe_ingredients ri LEFT JOIN ingredients i ON i.id = ri.ingredient_id "
    "ORDER BY ri.recipe_id, ri.id"
)
SNAPSHOT_COLUMNS = (
    "uuid, created_at, updated_at, recipe_id, production_run_id, scale_factor, snapshot_date, "
    "recipe_data, ingredients_data, is_backfilled"
)
UNLINKED_WITHOUT_SNAPSHOT = (
    "r.recipe_snapshot_id IS NULL AND NOT EXISTS "
    "(SELECT 1 FROM recipe_snapshots s WHERE s.production_run_id = r.id)"
)
# uuid4 text from random bytes where the server has no uuid4 function: version nibble 4,
# variant one of 8, 9, a, b; 122 random bits.
SQLITE_UUID4 = (
    "lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + abs(random() % 4), 1) || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6)))"
)
MARIADB_UUID4 = (
    "LOWER(CONCAT(SUBSTR(x.h, 1, 8), '-', SUBSTR(x.h, 9, 4), '-4', SUBSTR(x.h, 14, 3), '-', "
    "SUBSTR('89ab', 1 + FLOOR(RAND() * 4), 1), SUBSTR(x.h, 18, 3), '-', SUBSTR(x.h, 21, 12)))"
)


def payloads(cursor: Any) -> list[tuple[int, str, str]]:
    """Each recipe's two JSON texts, built once (the same objects payload.py builds)."""
    cursor.execute(f"SELECT {RECIPE_COLUMNS} FROM recipes")
    recipes = {row[0]: row for row in cursor.fetchall()}
    lines: dict[int, list[dict[str, Any]]] = {rid: [] for rid in recipes}
    cursor.execute(LINES)
    for recipe_id, ingredient_id, name, slug, quantity, unit, notes in cursor.fetchall():
        if recipe_id in lines:
            lines[recipe_id].append(
                {
                    "ingredient_id": ingredient_id,
                    "ingredient_name": "Unknown" if name is None else name,
                    "ingredient_slug": "" if name is None else (slug or ""),
                    "quantity": float(quantity),
                    "unit": unit,
                    "notes": notes,
                }
            )
    result = []
    for rid, r in recipes.items():
        data = {
            "name": r[1],
            "category": r[2],
            "source": r[3],
            "yield_quantity": None if r[4] is None else float(r[4]),
            "yield_unit": r[5],
            "yield_description": r[6],
            "estimated_time_minutes": r[7],
            "notes": r[8],
            "variant_name": r[9],
            "is_production_ready": bool(r[10]),
        }
        result.append((rid, json.dumps(data), json.dumps(lines[rid])))
    return result


def floor_sqlite(path: str, now: datetime) -> tuple[int, int]:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f")
    cur = conn.cursor()
    cur.execute("BEGIN IMMEDIATE")
    cur.execute("CREATE TEMP TABLE p (recipe_id INTEGER PRIMARY KEY, rd TEXT, idata TEXT)")
    cur.executemany("INSERT INTO p VALUES (?, ?, ?)", payloads(cur))
    cur.execute(
        f"INSERT INTO recipe_snapshots ({SNAPSHOT_COLUMNS}) "
        f"SELECT {SQLITE_UUID4}, ?, ?, r.recipe_id, r.id, 1.0, r.produced_at, p.rd, p.idata, 1 "
        f"FROM production_runs r JOIN p ON p.recipe_id = r.recipe_id "
        f"WHERE {UNLINKED_WITHOUT_SNAPSHOT}",
        (stamp, stamp),
    )
    created = cur.rowcount
    cur.execute(
        "UPDATE production_runs SET recipe_snapshot_id = s.id, updated_at = ? "
        "FROM recipe_snapshots s WHERE s.production_run_id = production_runs.id "
        "AND production_runs.recipe_snapshot_id IS NULL",
        (stamp,),
    )
    linked = cur.rowcount
    cur.execute("COMMIT")
    conn.close()
    return created, linked


def floor_postgresql(url: Any, now: datetime) -> tuple[int, int]:
    import psycopg

    conn = psycopg.connect(
        host=url.hostname,
        port=url.port or 5432,
        user=unquote(url.username or ""),
        password=unquote(url.password or "") or None,
        dbname=url.path.lstrip("/"),
    )
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE p (recipe_id integer PRIMARY KEY, rd text, idata text)")
        cur.executemany("INSERT INTO p VALUES (%s, %s, %s)", payloads(cur))
        cur.execute(
            f"INSERT INTO recipe_snapshots ({SNAPSHOT_COLUMNS}) "
            "SELECT gen_random_uuid()::text, %(now)s, %(now)s, r.recipe_id, r.id, 1.0, "
            "r.produced_at, p.rd, p.idata, true "
            f"FROM production_runs r JOIN p ON p.recipe_id = r.recipe_id "
            f"WHERE {UNLINKED_WITHOUT_SNAPSHOT}",
            {"now": now},
        )
        created = cur.rowcount
        cur.execute(
            "UPDATE production_runs r SET recipe_snapshot_id = s.id, updated_at = %(now)s "
            "FROM recipe_snapshots s WHERE s.production_run_id = r.id "
            "AND r.recipe_snapshot_id IS NULL",
            {"now": now},
        )
        linked = cur.rowcount
    conn.close()
    return created, linked


def floor_mariadb(url: Any, now: datetime) -> tuple[int, int]:
    import pymysql

    conn = pymysql.connect(
        host=url.hostname,
        port=url.port or 3306,
        user=unquote(url.username or ""),
        password=unquote(url.password or ""),
        database=url.path.lstrip("/"),
    )
    with conn.cursor() as cur:
        cur.execute("START TRANSACTION")
        cur.execute(
            "CREATE TEMPORARY TABLE p (recipe_id INTEGER PRIMARY KEY, rd LONGTEXT, idata LONGTEXT)"
        )
        cur.executemany("INSERT INTO p VALUES (%s, %s, %s)", payloads(cur))
        cur.execute(
            f"INSERT INTO recipe_snapshots ({SNAPSHOT_COLUMNS}) "
            f"SELECT {MARIADB_UUID4}, %(now)s, %(now)s, x.recipe_id, x.id, 1.0, x.produced_at, "
            "p.rd, p.idata, 1 FROM (SELECT r.id, r.recipe_id, r.produced_at, "
            f"HEX(RANDOM_BYTES(16)) AS h FROM production_runs r WHERE {UNLINKED_WITHOUT_SNAPSHOT}"
            ") x JOIN p ON p.recipe_id = x.recipe_id",
            {"now": now},
        )
        created = cur.rowcount
        cur.execute(
            "UPDATE production_runs r JOIN recipe_snapshots s ON s.production_run_id = r.id "
            "SET r.recipe_snapshot_id = s.id, r.updated_at = %(now)s "
            "WHERE r.recipe_snapshot_id IS NULL",
            {"now": now},
        )
        linked = cur.rowcount
    conn.commit()
    conn.close()
    return created, linked


def main(url_text: str) -> int:
    started = time.perf_counter()
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    url = urlsplit(url_text)
    backend = url.scheme.split("+", 1)[0]
    if backend == "sqlite":
        created, linked = floor_sqlite(url_text.split(":///", 1)[1], now)
    elif backend in ("postgresql", "postgres"):
        created, linked = floor_postgresql(url, now)
    elif backend in ("mysql", "mariadb"):
        created, linked = floor_mariadb(url, now)
    else:
        raise SystemExit(f"floor.py: unsupported URL {url_text}")
    print(
        json.dumps(
            {
                "migrated": created,
                "linked": linked,
                "seconds": round(time.perf_counter() - started, 4),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
