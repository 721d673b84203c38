"""The time of ``rehearse`` against the time of ``run`` alone, on each backend.

    python benchmarks/rehearse_time.py                  # 100k runs, SQLite (+ servers if set)
    python benchmarks/rehearse_time.py --sizes 10k,100k --backends sqlite,postgresql

For each size and backend, ``datagen.py`` generates a database (SQLite: a file in a temporary
directory; PostgreSQL/MariaDB: a new database on the server of
``SNAPSHOT_BACKFILL_TEST_POSTGRESQL_URL``/``SNAPSHOT_BACKFILL_TEST_MARIADB_URL``, dropped at
the end). Then, each in a process of its own under ``peak_rss.py``:
``snapshot-backfill rehearse --json`` on it (the source is only read), then
``snapshot-backfill run --yes --no-backup --json`` on the same database. Prints one line per
command (wall time, peak RSS, and for the rehearsal its phases, its verdict, and whether the
source's table digests, and a SQLite file's bytes and side files, are unchanged).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
SERVER_URLS = {
    "postgresql": "SNAPSHOT_BACKFILL_TEST_POSTGRESQL_URL",
    "mariadb": "SNAPSHOT_BACKFILL_TEST_MARIADB_URL",
}


def _size(text: str) -> int:
    text = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(text.rstrip("km")) * factor


@contextlib.contextmanager
def _database(backend: str, directory: Path, n: int) -> Iterator[str]:
    """A generated database of ``n`` runs; yields the URL to pass to the command line."""
    import sqlalchemy as sa

    sys.path.insert(0, str(BENCH_DIR))
    import datagen  # beside this file, not a package

    from snapshot_backfill.database import resolve_url

    if backend == "sqlite":
        path = directory / f"runs-{n}.sqlite"
        engine = sa.create_engine(f"sqlite:///{path}")
        try:
            datagen.generate(engine, n)
        finally:
            engine.dispose()
        yield str(path)
        return
    server = resolve_url(os.environ[SERVER_URLS[backend]])
    name = f"bench_rehearse_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        url = server.set(database=name)
        engine = sa.create_engine(url)
        try:
            datagen.generate(engine, n)
        finally:
            engine.dispose()
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


def _source_state(url: str) -> tuple[Any, ...]:
    """What must not change while the source is rehearsed: each table's digest (streamed),
    and for a SQLite file its bytes and its side files'."""
    from snapshot_backfill.database import is_sqlite, open_engine, resolve_url, sqlite_path
    from snapshot_backfill.testing.digest import table_digests
    from snapshot_backfill.testing.running import sqlite_files

    resolved = resolve_url(url)
    engine = open_engine(resolved)
    try:
        digests = table_digests(engine)
    finally:
        engine.dispose()
    if not is_sqlite(resolved):
        return (digests,)
    path = sqlite_path(resolved)
    assert path is not None
    return digests, sqlite_files(path)


def _measure(*argv: str) -> tuple[float, int, dict[str, Any]]:
    """Run ``snapshot-backfill ARGV`` under peak_rss.py: wall seconds, peak kB, its JSON."""
    with tempfile.NamedTemporaryFile(suffix=".kb") as peak:
        started = time.perf_counter()
        out = subprocess.run(
            [
                sys.executable,
                str(BENCH_DIR / "peak_rss.py"),
                peak.name,
                "-m",
                "snapshot_backfill",
                *list(argv),
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - started
        if out.returncode not in (0, 1):
            raise SystemExit(f"snapshot-backfill {argv[0]} failed: {out.stderr.strip()}")
        return wall, int(Path(peak.name).read_text()), json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100k", help="runs per database (default 100k)")
    parser.add_argument(
        "--backends",
        default="sqlite,postgresql,mariadb",
        help="backends to measure (servers only where their URL is set)",
    )
    parser.add_argument("--batch-size", default="5000")
    args = parser.parse_args()
    backends = [
        b
        for b in args.backends.split(",")
        if b == "sqlite" or os.environ.get(SERVER_URLS.get(b, ""), "").strip()
    ]
    with tempfile.TemporaryDirectory(prefix="rehearse-time-") as tmp:
        for n in (_size(s) for s in args.sizes.split(",") if s):
            for backend in backends:
                with _database(backend, Path(tmp), n) as url:
                    env_tmp = Path(tmp) / "scratch"
                    env_tmp.mkdir(exist_ok=True)
                    os.environ["TMPDIR"] = str(env_tmp)
                    before = _source_state(url)
                    wall, kb, doc = _measure(
                        "rehearse", "--database-url", url, "--json", "--batch-size", args.batch_size
                    )
                    unchanged = _source_state(url) == before
                    phases = ", ".join(f"{k} {v:.1f}" for k, v in doc["timings_s"].items())
                    print(
                        f"{backend} {n} runs: rehearse {wall:.1f} s, peak RSS {kb / 1024:.0f} MiB, "
                        f"verdict {doc['verdict']}, longest batch {doc['longest_batch_s']} s, "
                        f"source {'unchanged' if unchanged else 'CHANGED'}; phases (s): {phases}",
                        flush=True,
                    )
                    if not unchanged:
                        raise SystemExit(f"rehearse changed its source {url}")
                    wall, kb, doc = _measure(
                        "run", "--database-url", url, "--yes", "--no-backup", "--json",
                        "--batch-size", args.batch_size,
                    )  # fmt: skip
                    print(
                        f"{backend} {n} runs: run alone {wall:.1f} s (its duration_s "
                        f"{doc['duration_s']}), peak RSS {kb / 1024:.0f} MiB, migrated "
                        f"{doc['migrated']}, longest batch {doc['longest_batch_s']} s",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
