"""What a run costs a live application: its waits while ``snapshot-backfill run`` works.

For each backend: a production-shaped database of N runs (``datagen.py``), then ``run`` in
its own process while a simulated application, in this one, records runs (single-row
INSERTs), touches runs (UPDATE of ``updated_at``, as its ORM writes it) and renames a recipe,
one operation after another (10 ms apart, ``--think-ms``), each in its own transaction with
the application's 5 s busy timeout. Each operation's wait is timed; the table gives the max
and p99 per operation, next to the run's throughput, once with the defaults and once with a
tight ``--max-batch-seconds``. ``run`` keeps its default ``--pause`` (0.12 s between batches on
SQLite, none on a server).

    python benchmarks/app_impact.py --runs 100000 [--postgresql-url URL] [--mariadb-url URL]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import sqlalchemy as sa

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import datagen  # noqa: E402  (beside this file, not a package)

from snapshot_backfill.models import production_runs, recipes  # noqa: E402

OPERATIONS = ("insert run", "update run", "rename recipe")


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def _fresh(kind: str, server: Optional[str], workdir: Path, n: int) -> tuple[str, Any]:
    """A new database of n runs; returns its URL and a dropper."""
    if kind == "sqlite":
        path = workdir / f"impact_{uuid.uuid4().hex[:8]}.db"
        engine = sa.create_engine(f"sqlite:///{path}", poolclass=sa.NullPool)
        datagen.generate(engine, n)
        engine.dispose()
        return str(path), lambda: None
    assert server is not None
    name = f"impact_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = sa.make_url(server).set(database=name)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    datagen.generate(engine, n)
    engine.dispose()

    def drop() -> None:
        with admin.connect() as conn:
            if kind == "postgresql":
                conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
            else:
                conn.exec_driver_sql(f"DROP DATABASE {name}")
        admin.dispose()

    return url.render_as_string(hide_password=False), drop


def _application(url: str, kind: str) -> sa.Engine:
    if kind == "sqlite":
        return sa.create_engine(
            f"sqlite:///{url}", connect_args={"timeout": 5.0}, poolclass=sa.NullPool
        )
    return sa.create_engine(url, pool_size=1)


def measure(kind: str, url: str, options: list[str], think_s: float) -> dict[str, Any]:
    """Run the migrator on ``url`` while the application writes; return the waits.

    The application pauses ``think_s`` between operations (a user's pace is far slower): with
    no pause at all, its back-to-back SQLite transactions would keep the migrator from ever
    taking the write lock, which is a benchmark of the loop, not of the migrator.
    """
    app = _application(url, kind)
    waits: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    errors: dict[str, int] = {op: 0 for op in OPERATIONS}
    with app.connect() as conn:
        template = dict(
            conn.execute(sa.select(production_runs).order_by(production_runs.c.id).limit(1))
            .one()
            ._mapping
        )
        top = conn.execute(sa.select(sa.func.max(production_runs.c.id))).scalar_one()
        recipe_id = conn.execute(sa.select(sa.func.min(recipes.c.id))).scalar_one()
    template.pop("id")
    template.pop("uuid")
    backup = ["--backup-taken"] if kind != "sqlite" else ["--no-backup"]
    # The report goes to a file: a pipe read only at the end would fill up (the JSON of a run
    # of 100k runs is larger than a pipe's buffer) and block the migrator before it exits.
    with tempfile.TemporaryFile(mode="w+") as report_file:
        migrator = subprocess.Popen(
            [
                *(sys.executable, "-m", "snapshot_backfill", "run", "--database-url", url, "--yes"),
                *(*backup, "--json", "--min-age", "0", *options),
            ],
            stdout=report_file,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        i = 0
        renamed = False
        while migrator.poll() is None:
            i += 1
            op = OPERATIONS[i % 2]
            if not renamed and i > 200:
                op, renamed = "rename recipe", True
            started = time.perf_counter()
            try:
                with app.begin() as conn:
                    if op == "insert run":
                        conn.execute(
                            sa.insert(production_runs).values(**template, uuid=str(uuid.uuid4()))
                        )
                    elif op == "update run":
                        conn.execute(
                            sa.update(production_runs)
                            .where(production_runs.c.id == 1 + (i * 7919) % top)
                            .values(updated_at=datagen.START)
                        )
                    else:
                        conn.execute(
                            sa.update(recipes)
                            .where(recipes.c.id == recipe_id)
                            .values(name=sa.func.concat(recipes.c.name, " (renamed)"))
                            if kind != "sqlite"
                            else sa.update(recipes)
                            .where(recipes.c.id == recipe_id)
                            .values(name=recipes.c.name + " (renamed)")
                        )
            except sa.exc.OperationalError:
                errors[op] += 1
            waits[op].append(time.perf_counter() - started)
            time.sleep(think_s)
        migrator.wait()
        app.dispose()
        report_file.seek(0)
        report = json.loads(report_file.read())
    linked = report["migrated"] + report["linked_existing"]
    return {
        "runs_per_s": linked / report["duration_s"] if report["duration_s"] else 0.0,
        "longest_batch_s": report.get("longest_batch_s"),
        "batches": report["batches"],
        "ops": {
            op: {
                "count": len(w),
                "max_ms": 1000 * max(w, default=0.0),
                "p99_ms": 1000 * _percentile(w, 0.99),
                "errors": errors[op],
            }
            for op, w in waits.items()
        },
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100000)
    parser.add_argument("--postgresql-url")
    parser.add_argument("--mariadb-url")
    parser.add_argument("--tight", default="0.05", help="the tight --max-batch-seconds")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--think-ms", type=float, default=10.0, help="the application's pause between operations"
    )
    args = parser.parse_args(argv)
    backends = [("sqlite", None)]
    backends += [("postgresql", args.postgresql_url)] if args.postgresql_url else []
    backends += [("mariadb", args.mariadb_url)] if args.mariadb_url else []
    settings = [
        ("default", []),
        (f"--max-batch-seconds {args.tight}", ["--max-batch-seconds", args.tight]),
    ]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, server in backends:
            for label, options in settings:
                url, drop = _fresh(kind, server, Path(tmp), args.runs)
                try:
                    figures = measure(kind, url, options, args.think_ms / 1000)
                finally:
                    drop()
                results.append({"backend": kind, "setting": label, **figures})
                ops = "; ".join(
                    f"{op}: max {f['max_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms"
                    + (f", {f['errors']} errors" if f["errors"] else "")
                    for op, f in figures["ops"].items()
                )
                print(
                    f"{kind:<10} {label:<26} {figures['runs_per_s']:>8,.0f} runs/s, "
                    f"longest batch {figures['longest_batch_s']:.3f}s | {ops}",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
