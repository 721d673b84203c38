"""Peak RSS of a whole-database digest (``snapshot_backfill.testing.digest``) by size.

    python benchmarks/fingerprint_rss.py                    # 10k and 1M runs, SQLite
    python benchmarks/fingerprint_rss.py --sizes 10k,100k --load-sizes 10k,100k

For each size, ``datagen.py`` generates a SQLite database in a temporary directory; then a
fresh child process (under ``peak_rss.py``, which records the child's own high-water mark)
digests every table with ``table_digests``. ``--load-sizes`` also measures, for comparison,
reading every row into memory at once (what a whole-database fingerprint did before the digests
streamed). Prints one line per measurement and the 1M/10k ratio; writes nothing else.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def _size(text: str) -> int:
    text = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(text.rstrip("km")) * factor


def _generate(path: Path, n: int) -> None:
    sys.path.insert(0, str(BENCH_DIR))
    import datagen  # beside this file, not a package
    import sqlalchemy as sa

    # A plain engine, as bench_backfill.py makes: datagen turns foreign keys off itself.
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        datagen.generate(engine, n)
    finally:
        engine.dispose()


def _child(mode: str, path: str) -> None:
    """Run in the measured process: digest (or load) every table, print JSON."""
    import sqlalchemy as sa

    from snapshot_backfill.database import open_engine, read_only, resolve_url
    from snapshot_backfill.testing.digest import table_digests

    engine = open_engine(resolve_url(path))
    started = time.perf_counter()
    try:
        if mode == "digest":
            rows = {name: d.rows for name, d in table_digests(engine).items()}
        else:  # everything in memory at once, as a whole-database image holds it
            with read_only(engine) as conn:
                held = {
                    name: conn.exec_driver_sql(f'SELECT * FROM "{name}"').all()
                    for name in sa.inspect(conn).get_table_names()
                }
            rows = {name: len(r) for name, r in held.items()}
    finally:
        engine.dispose()
    print(json.dumps({"rows": rows, "seconds": round(time.perf_counter() - started, 2)}))


def _measure(mode: str, path: Path) -> tuple[int, dict]:
    with tempfile.NamedTemporaryFile(suffix=".kb") as peak:
        out = subprocess.run(
            [
                sys.executable,
                str(BENCH_DIR / "peak_rss.py"),
                peak.name,
                str(Path(__file__).resolve()),
                "--child",
                mode,
                str(path),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return int(Path(peak.name).read_text()), json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10k,1M", help="runs per database (default 10k,1M)")
    parser.add_argument(
        "--load-sizes", default="", help="also measure loading every row at once at these sizes"
    )
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return 0
    sizes = [_size(s) for s in args.sizes.split(",") if s]
    load_sizes = {_size(s) for s in args.load_sizes.split(",") if s}
    peaks: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="fingerprint-rss-") as tmp:
        for n in sorted(set(sizes) | load_sizes):
            path = Path(tmp) / f"runs-{n}.sqlite"
            started = time.perf_counter()
            _generate(path, n)
            print(f"{n} runs: generated in {time.perf_counter() - started:.1f} s", flush=True)
            for mode in ("digest", "load") if n in load_sizes else ("digest",):
                if mode == "digest" and n not in sizes:
                    continue
                kb, doc = _measure(mode, path)
                if mode == "digest":
                    peaks[n] = kb
                runs = doc["rows"].get("production_runs")
                print(
                    f"{n} runs: {mode}: peak RSS {kb / 1024:.1f} MiB, {doc['seconds']} s "
                    f"(production_runs {runs} rows)",
                    flush=True,
                )
            path.unlink()
    if len(peaks) > 1:
        small, large = min(peaks), max(peaks)
        print(f"digest peak RSS {large} runs / {small} runs: {peaks[large] / peaks[small]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
