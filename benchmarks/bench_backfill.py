#!/usr/bin/env python3
"""Benchmark snapshot-backfill against the raw-SQL floor and the naive ORM loop.

For each backend and size N it generates one production-shaped database (datagen.py), then
measures, each phase in a fresh child process started on an identical copy of it:

- ``floor``: the least work the job can be done with on that backend (floor.py);
- the migrator through its command line: ``plan``, ``run``, ``run`` again (nothing to do),
  ``verify``, ``rollback``;
- ``naive``: the work package's per-run ORM loop (naive.py), at the sizes asked for.

Wall time is the whole child process, start-up included; peak RSS is the child's own
``ru_maxrss`` (``os.wait4``). Every phase's output is checked against what the generator
made (counts, verify ok, second run idle, rollback restores the database exactly); any
disagreement makes the benchmark exit 1. See README.md beside this file.

    python benchmarks/bench_backfill.py --quick      # 10k runs on SQLite: CI's check
    python benchmarks/bench_backfill.py --full       # 10k/100k/1M, writes RESULTS.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import sqlalchemy as sa

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import datagen  # noqa: E402  (beside this file, not a package)

from snapshot_backfill.models import Base  # noqa: E402
from snapshot_backfill.sample_data import ExpectedCounts  # noqa: E402

PG_ENV = "SNAPSHOT_BACKFILL_BENCH_POSTGRESQL_URL"
MARIADB_ENV = "SNAPSHOT_BACKFILL_BENCH_MARIADB_URL"
DB_PREFIX = "sbbench_"
QUICK_SIZES = (10_000,)
FULL_SIZES = (10_000, 100_000, 1_000_000)
FULL_NAIVE_SIZES = (10_000, 100_000)
REPEAT_MAX_N = 100_000
MIGRATOR_PHASES = ("plan", "run", "run_again", "verify", "rollback")
PHASES = ("floor", *MIGRATOR_PHASES, "naive")
# The targets; evaluated and reported, never a reason to fail.
FLOOR_RATIO_TARGET = {"sqlite": 1.5, "postgresql": 1.5, "mariadb": 2.0}


# --- measuring a child process -------------------------------------------------------------


@dataclass
class Sample:
    """One phase measured in one child process."""

    backend: str
    n: int
    phase: str
    seconds: float
    cpu_s: float
    maxrss_kb: int
    items: int  # runs the phase handled: linked for run/floor/naive, all runs otherwise

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Child:
    code: int
    seconds: float
    cpu_s: float
    maxrss_kb: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_child(args: list[str]) -> Child:
    """Run ``python ARGS`` in a child; return its exit code, times, peak RSS and output.

    The child runs under peak_rss.py, which records the process's own peak RSS (see there);
    wall time is the whole process, interpreter start-up included.
    """
    with tempfile.TemporaryDirectory(prefix=DB_PREFIX) as tmp:
        peak = Path(tmp) / "peak_kb"
        out_path, err_path = Path(tmp) / "out", Path(tmp) / "err"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            argv = [sys.executable, str(BENCH_DIR / "peak_rss.py"), str(peak), *args]
            started = time.perf_counter()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            try:
                # wait4: the child's own CPU time (its ru_maxrss is not its own: peak_rss.py).
                _, status, usage = os.wait4(proc.pid, 0)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            seconds = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
        return Child(
            code=proc.returncode,
            seconds=seconds,
            cpu_s=usage.ru_utime + usage.ru_stime,
            maxrss_kb=int(peak.read_text()) if peak.exists() else usage.ru_maxrss,
            stdout=out_path.read_text(),
            stderr=err_path.read_text(),
        )


class Broken(Exception):
    """The benchmark found a wrong result: a count, a verify, a restore."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise Broken(what)


# --- backends: one base database per N, identical copies for each measured process ---------


class Backend:
    name: str

    def create_base(self, n: int) -> str:
        """Generate the base database for ``n`` runs; return its SQLAlchemy URL."""
        raise NotImplementedError

    def copy(self, base: str, tag: str) -> str:
        raise NotImplementedError

    def drop(self, url: str) -> None:
        raise NotImplementedError

    def settle(self) -> None:
        """Let the previous phase's writes reach the disk before the next phase is timed."""

    def cli_url(self, url: str) -> str:
        return url

    def describe(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.NullPool)


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def _path(self, url: str) -> Path:
        return Path(sa.make_url(url).database or "")

    def create_base(self, n: int) -> str:
        path = self.workdir / f"base_{n}.sqlite"
        url = f"sqlite:///{path}"
        engine = _engine(url)
        datagen.generate(engine, n)
        engine.dispose()
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        return url

    def copy(self, base: str, tag: str) -> str:
        source = self._path(base)
        target = self.workdir / f"{source.stem}_{tag}.sqlite"
        shutil.copyfile(source, target)
        return f"sqlite:///{target}"

    def drop(self, url: str) -> None:
        path = self._path(url)
        for suffix in ("", "-wal", "-shm", ".snapshot-backfill.lock"):
            Path(str(path) + suffix).unlink(missing_ok=True)

    def cli_url(self, url: str) -> str:
        return str(self._path(url))

    def describe(self) -> str:
        return f"SQLite {sqlite3.sqlite_version} (file, WAL, as the application opens it)"


class ServerBackend(Backend):
    def __init__(self, admin_url: str, run_tag: str) -> None:
        self.admin_url = sa.make_url(admin_url)
        self.admin = sa.create_engine(
            self.admin_url, poolclass=sa.NullPool, isolation_level="AUTOCOMMIT"
        )
        self.run_tag = run_tag
        self.created: list[str] = []

    def _url_for(self, database: str) -> str:
        return self.admin_url.set(database=database).render_as_string(hide_password=False)

    def _database(self, url: str) -> str:
        return sa.make_url(url).database or ""

    def _admin(self, sql: str) -> Any:
        with self.admin.connect() as conn:
            result = conn.exec_driver_sql(sql)
            return result.fetchall() if result.returns_rows else None

    def create_base(self, n: int) -> str:
        name = f"{DB_PREFIX}{self.run_tag}_{n}_base"
        self._create_database(name)
        url = self._url_for(name)
        engine = _engine(url)
        datagen.generate(engine, n)
        engine.dispose()
        return url

    def _create_database(self, name: str, template: Optional[str] = None) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {name}")
        self._admin(
            f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template is not None else "")
        )
        self.created.append(name)

    def close(self) -> None:
        for name in list(self.created):
            self._drop_database(name)
        self.admin.dispose()

    def _drop_database(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {name}")
        if name in self.created:
            self.created.remove(name)

    def drop(self, url: str) -> None:
        self._drop_database(self._database(url))


class PostgresBackend(ServerBackend):
    name = "postgresql"

    def copy(self, base: str, tag: str) -> str:
        name = f"{self._database(base)[: -len('_base')]}_{tag}"
        # A file-level copy of the base: identical pages, statistics and sequences.
        self._create_database(name, template=self._database(base))
        return self._url_for(name)

    def _drop_database(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if name in self.created:
            self.created.remove(name)

    def settle(self) -> None:
        self._admin("CHECKPOINT")

    def describe(self) -> str:
        version = self._admin("SELECT version()")[0][0].split(" on ")[0]
        settings = {
            name: self._admin(f"SELECT current_setting('{name}')")[0][0]
            for name in ("shared_buffers", "synchronous_commit")
        }
        return f"{version} ({', '.join(f'{k}={v}' for k, v in settings.items())}), TCP on localhost"


class MariadbBackend(ServerBackend):
    name = "mariadb"

    def copy(self, base: str, tag: str) -> str:
        base_db = self._database(base)
        name = f"{base_db[: -len('_base')]}_{tag}"
        self._create_database(name)
        url = self._url_for(name)
        engine = _engine(url)
        Base.metadata.create_all(engine)  # the same DDL, foreign keys included
        engine.dispose()
        with self.admin.connect() as conn:
            conn.exec_driver_sql("SET foreign_key_checks = 0")
            for table in Base.metadata.sorted_tables:
                conn.exec_driver_sql(
                    f"INSERT INTO {name}.{table.name} SELECT * FROM {base_db}.{table.name}"
                )
            conn.exec_driver_sql("SET foreign_key_checks = 1")
            for table in ("production_runs", "recipe_snapshots"):
                conn.exec_driver_sql(f"ANALYZE TABLE {name}.{table}").fetchall()
        return url

    def describe(self) -> str:
        version = self._admin("SELECT version()")[0][0]
        pool = int(self._admin("SELECT @@innodb_buffer_pool_size")[0][0]) // 2**20
        flush = self._admin("SELECT @@innodb_flush_log_at_trx_commit")[0][0]
        return (
            f"MariaDB {version} (innodb_buffer_pool_size={pool}MB, "
            f"innodb_flush_log_at_trx_commit={flush}), TCP on localhost"
        )


# --- what a database must look like --------------------------------------------------------


def fingerprint(url: str) -> str:
    """A digest of every run's link and updated_at, the snapshots' ids and the journal."""
    engine = _engine(url)
    digest = hashlib.sha256()
    try:
        with engine.connect() as conn:
            rows = conn.execution_options(yield_per=20_000).exec_driver_sql(
                "SELECT id, recipe_snapshot_id, updated_at FROM production_runs ORDER BY id"
            )
            for row in rows:
                digest.update(repr(tuple(row)).encode())
            conn.rollback()
            snaps = conn.exec_driver_sql(
                "SELECT count(*), coalesce(sum(id), 0) FROM recipe_snapshots"
            ).one()
            digest.update(repr(tuple(int(v) for v in snaps)).encode())
            digest.update(str(sa.inspect(conn).has_table("snapshot_backfill_journal")).encode())
    finally:
        engine.dispose()
    return digest.hexdigest()


def check_plan(doc: dict[str, Any], exp: ExpectedCounts, where: str) -> None:
    expected = {**exp.to_dict(), "to_link_existing": exp.link_existing}
    for key in ("total_runs", "already_linked", "to_migrate", "to_link_existing", "orphaned"):
        check(
            doc[key] == expected[key],
            f"{where}: plan {key} = {doc[key]}, expected {expected[key]}",
        )


# --- the benchmark -------------------------------------------------------------------------


@dataclass
class Options:
    sizes: tuple[int, ...]
    naive_sizes: tuple[int, ...]
    batch_size: Optional[int]
    repeat: int
    verify_references: bool
    log: Callable[[str], None]
    phases: frozenset[str] = frozenset(PHASES)


@dataclass
class Results:
    samples: list[Sample] = field(default_factory=list)
    generate_s: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, sample: Sample, log: Callable[[str], None]) -> None:
        self.samples.append(sample)
        log(
            f"  {sample.backend:<10} {sample.n:>9,} {sample.phase:<10} {sample.seconds:8.2f} s "
            f"cpu {sample.cpu_s:7.2f} s  {sample.rate:>10,.0f} runs/s  "
            f"peak RSS {sample.maxrss_kb / 1024:6.1f} MB"
        )


def cli(*args: str) -> list[str]:
    return ["-m", "snapshot_backfill", *args]


def bench_size(backend: Backend, n: int, opts: Options, results: Results) -> None:
    exp = datagen.expected(n)
    where = f"{backend.name} N={n}"
    started = time.perf_counter()
    base = backend.create_base(n)
    results.generate_s[f"{backend.name}:{n}"] = time.perf_counter() - started
    opts.log(f"{where}: generated in {time.perf_counter() - started:.1f} s")
    try:
        before = fingerprint(base)
        batch = ["--batch-size", str(opts.batch_size)] if opts.batch_size else []

        def measured(phase: str, argv: list[str], items: int) -> Child:
            backend.settle()
            child = run_child(argv)
            check(
                child.code == 0,
                f"{where}: {phase} exited {child.code}: {child.stderr.strip()[-2000:]}",
            )
            results.add(
                Sample(backend.name, n, phase, child.seconds, child.cpu_s, child.maxrss_kb, items),
                opts.log,
            )
            return child

        def reference(phase: str, script: str, copy: str, target: str) -> None:
            """Measure a reference point (floor or naive) on ``copy`` and check what it did."""
            out = measured(phase, [str(BENCH_DIR / script), target], exp.work).json()
            check(
                (out["migrated"], out["linked"]) == (exp.to_migrate, exp.work),
                f"{where}: {phase} made {out}, expected {exp.to_migrate} and {exp.work}",
            )
            if opts.verify_references:
                verified = run_child(
                    cli("verify", "--database-url", backend.cli_url(copy), "--json")
                )
                check(
                    verified.code == 0,
                    f"{where}: verify after {phase}: {verified.stdout[-2000:]}",
                )

        # Repeats (best kept) where the floor ratio is judged; one measurement at 1M.
        for attempt in range(opts.repeat if n <= REPEAT_MAX_N else 1):
            # The floor, on its own copy.
            copy = backend.copy(base, f"floor{attempt}")
            try:
                if "floor" not in opts.phases:
                    continue
                reference("floor", "floor.py", copy, copy)
            finally:
                backend.drop(copy)

            # The migrator's phases, in order, on one copy.
            copy = backend.copy(base, f"migrator{attempt}")
            url = backend.cli_url(copy)
            try:
                if attempt == 0 and "plan" in opts.phases:
                    doc = measured("plan", cli("plan", "--database-url", url, "--json"), n).json()
                    check_plan(doc, exp, where)
                doc = measured(
                    "run",
                    cli("run", "--database-url", url, "--yes", "--no-backup", "--json", *batch),
                    exp.work,
                ).json()
                check_plan(doc, exp, f"{where} run")
                got = (
                    doc["migrated"],
                    doc["linked_existing"],
                    doc["skipped_orphans"],
                    doc["errors"],
                )
                check(
                    got == (exp.to_migrate, exp.link_existing, exp.orphaned, []),
                    f"{where}: run reported {got}",
                )
                if attempt > 0 or "run_again" not in opts.phases:
                    continue
                doc = measured(
                    "run_again",
                    cli("run", "--database-url", url, "--yes", "--no-backup", "--json", *batch),
                    n,
                ).json()
                check(
                    (doc["migrated"], doc["linked_existing"], doc["to_migrate"]) == (0, 0, 0),
                    f"{where}: the second run was not idle: {doc['migrated']} migrated",
                )
                doc = measured("verify", cli("verify", "--database-url", url, "--json"), n).json()
                check(
                    doc["ok"] and doc["runs_checked"] == n,
                    f"{where}: verify: {doc['problems'][:5]}",
                )
                doc = measured(
                    "rollback",
                    cli(
                        "rollback", "--database-url", url, "--yes", "--no-backup", "--json", *batch
                    ),
                    exp.work,
                ).json()
                check(
                    (doc["runs_unlinked"], doc["snapshots_deleted"]) == (exp.work, exp.to_migrate),
                    f"{where}: rollback undid {doc}",
                )
                check(
                    fingerprint(copy) == before, f"{where}: rollback did not restore the database"
                )
            finally:
                backend.drop(copy)

        if n in opts.naive_sizes and "naive" in opts.phases:
            copy = backend.copy(base, "naive")
            try:
                reference("naive", "naive.py", copy, backend.cli_url(copy))
            finally:
                backend.drop(copy)
    finally:
        backend.drop(base)


# --- reporting -----------------------------------------------------------------------------


def best(samples: list[Sample], backend: str, n: int, phase: str) -> Optional[Sample]:
    found = [s for s in samples if (s.backend, s.n, s.phase) == (backend, n, phase)]
    return min(found, key=lambda s: s.seconds) if found else None


def _fmt_n(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def _fmt_rate(rate: float) -> str:
    return f"{rate / 1000:,.1f}k/s" if rate >= 1000 else f"{rate:,.0f}/s"


def tables(results: Results) -> str:
    samples = results.samples
    keys = sorted(
        {(s.backend, s.n) for s in samples}, key=lambda k: (BACKEND_ORDER.index(k[0]), k[1])
    )
    lines = [
        "| backend | N | plan | run | run again | verify | rollback | floor | naive "
        "| run / floor | speed-up over naive |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for backend, n in keys:
        cells = []
        for phase in ("plan", "run", "run_again", "verify", "rollback", "floor", "naive"):
            s = best(samples, backend, n, phase)
            cells.append("-" if s is None else f"{s.seconds:.2f} s ({_fmt_rate(s.rate)})")
        run, floor, naive = (best(samples, backend, n, p) for p in ("run", "floor", "naive"))
        ratio = f"{run.seconds / floor.seconds:.2f}x" if run and floor else "-"
        speedup = f"{naive.seconds / run.seconds:.0f}x" if run and naive else "-"
        lines.append(
            f"| {backend} | {_fmt_n(n)} | " + " | ".join(cells) + f" | {ratio} | {speedup} |"
        )
    lines += [
        "",
        "Peak RSS of each phase's process (MB):",
        "",
        "| backend | N | plan | run | run again | verify | rollback | floor | naive "
        "| CPU s of run (floor) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for backend, n in keys:
        cells = []
        for phase in ("plan", "run", "run_again", "verify", "rollback", "floor", "naive"):
            s = best(samples, backend, n, phase)
            cells.append("-" if s is None else f"{s.maxrss_kb / 1024:.0f}")
        run, floor = best(samples, backend, n, "run"), best(samples, backend, n, "floor")
        cpu = f"{run.cpu_s:.2f} ({floor.cpu_s:.2f})" if run and floor else "-"
        lines.append(f"| {backend} | {_fmt_n(n)} | " + " | ".join(cells) + f" | {cpu} |")
    return "\n".join(lines)


BACKEND_ORDER = ["sqlite", "postgresql", "mariadb"]


def targets(results: Results) -> list[tuple[str, Optional[bool], str]]:
    """Each target of the issue: (name, met or None if not measured, the figures)."""
    s = results.samples
    out: list[tuple[str, Optional[bool], str]] = []
    for backend, limit in FLOOR_RATIO_TARGET.items():
        run, floor = best(s, backend, 100_000, "run"), best(s, backend, 100_000, "floor")
        name = f"{backend}: run at 100k within {limit}x of the floor"
        if run and floor:
            ratio = run.seconds / floor.seconds
            out.append(
                (
                    name,
                    ratio <= limit,
                    f"{run.seconds:.2f} s / {floor.seconds:.2f} s = {ratio:.2f}x",
                )
            )
        else:
            out.append((name, None, "not measured"))
    for phase in ("plan", "run_again"):
        for backend in BACKEND_ORDER:
            x = best(s, backend, 1_000_000, phase)
            required = backend == "sqlite" or phase == "run_again"
            if x is None:
                if backend == "sqlite":
                    out.append((f"{backend}: {phase} at 1M under 2 s", None, "not measured"))
                continue
            label = f"{backend}: {phase} at 1M under 2 s" + ("" if required else " (not a target)")
            out.append((label, x.seconds < 2.0 if required else None, f"{x.seconds:.2f} s"))
    for backend in BACKEND_ORDER:
        for phase in MIGRATOR_PHASES:
            small, large = best(s, backend, 10_000, phase), best(s, backend, 1_000_000, phase)
            if small and large:
                ratio = large.maxrss_kb / small.maxrss_kb
                out.append(
                    (
                        f"{backend}: {phase} peak RSS at 1M within 1.5x of 10k",
                        ratio <= 1.5,
                        f"{large.maxrss_kb / 1024:.0f} MB / {small.maxrss_kb / 1024:.0f} MB "
                        f"= {ratio:.2f}x",
                    )
                )
        mid, large = best(s, backend, 100_000, "run"), best(s, backend, 1_000_000, "run")
        if mid and large:
            per_mid, per_large = mid.seconds / mid.items, large.seconds / large.items
            ratio = per_large / per_mid
            out.append(
                (
                    f"{backend}: run time per run at 1M within 1.3x of 100k",
                    ratio <= 1.3,
                    f"{per_large * 1e6:.1f} us / {per_mid * 1e6:.1f} us = {ratio:.2f}x",
                )
            )
    return out


def machine(backends: list[Backend]) -> list[str]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 2**20:.0f} GB RAM"
    except (OSError, ValueError, IndexError):
        pass
    lines = [
        f"- {cpu}, {os.cpu_count()} cores{memory}; {platform.platform()}",
        f"- Python {platform.python_version()}, SQLAlchemy {sa.__version__}",
    ]
    lines += [f"- {b.describe()}" for b in backends]
    return lines


def write_outputs(
    results: Results,
    backends: list[Backend],
    directory: Path,
    argv: list[str],
    started: datetime,
    load: tuple[str, str],
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(
        json.dumps(
            {
                "started": started.isoformat(timespec="seconds"),
                "argv": argv,
                "generate_s": results.generate_s,
                "samples": [asdict(s) for s in results.samples],
            },
            indent=1,
        )
        + "\n"
    )
    plot(results, directory / "results.png")
    rows = targets(results)
    met = lambda ok: "met" if ok else ("**missed**" if ok is False else "-")  # noqa: E731
    text = [
        "# Benchmark results",
        "",
        f"The latest full run: `python benchmarks/bench_backfill.py {' '.join(argv)}`, "
        f"started {started:%Y-%m-%d %H:%M} UTC. Written by the benchmark itself; how to read it "
        "and what the profile showed: [README.md](README.md).",
        "",
        "Each cell is the wall time of one child process (start-up included) and, in brackets, "
        "runs per second: runs linked for run/floor/naive, runs in the database for the other "
        "phases. Best of the repeats where a phase was repeated. `run / floor` is the ratio of "
        "the two times; the speed-up is naive's time over run's.",
        "",
        tables(results),
        "",
        "![runs/s against N](results.png)",
        "",
        "## Targets",
        "",
        "| target | result | figures |",
        "|---|---|---|",
        *[f"| {name} | {met(ok)} | {fig} |" for name, ok, fig in rows],
        "",
        "## Machine",
        "",
        *machine(backends),
        f"- load average at start / end: {load[0]} / {load[1]} (the machine is shared; "
        "other work running meanwhile shows as noise)",
        "",
        "Generating the base databases took "
        + ", ".join(f"{k.replace(':', ' ')}: {v:.0f} s" for k, v in results.generate_s.items())
        + ".",
        "",
    ]
    (directory / "RESULTS.md").write_text("\n".join(text))


def plot(results: Results, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = {"sqlite": "tab:blue", "postgresql": "tab:green", "mariadb": "tab:orange"}
    styles = {
        "run": ("-", "o", "migrator run"),
        "floor": ("--", "s", "raw-SQL floor"),
        "naive": (":", "x", "naive ORM loop"),
    }
    for backend in BACKEND_ORDER:
        for phase, (line, marker, label) in styles.items():
            sizes = sorted(
                {s.n for s in results.samples if (s.backend, s.phase) == (backend, phase)}
            )
            points = [best(results.samples, backend, n, phase) for n in sizes]
            if not sizes:
                continue
            ax.plot(
                sizes,
                [p.rate if p else 0.0 for p in points],
                linestyle=line,
                marker=marker,
                color=colors[backend],
                label=f"{backend}: {label}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("production runs in the database (N)")
    ax.set_ylabel("runs linked per second (whole process)")
    ax.set_title("snapshot-backfill run vs. the raw-SQL floor and the naive loop")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- command line --------------------------------------------------------------------------


def _sizes(text: str) -> tuple[int, ...]:
    def one(part: str) -> int:
        part = part.strip().lower()
        scale = 1_000_000 if part.endswith("m") else 1000 if part.endswith("k") else 1
        return int(float(part.rstrip("mk")) * scale)

    return tuple(one(p) for p in text.split(",") if p.strip())


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="10k runs on SQLite (and servers given): correctness"
    )
    mode.add_argument(
        "--full",
        action="store_true",
        help="10k, 100k and 1M; writes RESULTS.md, results.json, results.png",
    )
    parser.add_argument("--sizes", type=_sizes, help="e.g. 10k,100k,1m")
    parser.add_argument("--naive-sizes", type=_sizes, help="sizes at which to run the naive loop")
    parser.add_argument(
        "--backends", default=None, help="comma-separated: sqlite,postgresql,mariadb"
    )
    parser.add_argument(
        "--postgresql-url",
        default=os.environ.get(PG_ENV),
        help=f"an admin URL (default: ${PG_ENV})",
    )
    parser.add_argument(
        "--mariadb-url",
        default=os.environ.get(MARIADB_ENV),
        help=f"an admin URL (default: ${MARIADB_ENV})",
    )
    parser.add_argument("--batch-size", type=int, help="passed to run and rollback")
    parser.add_argument(
        "--repeat",
        type=int,
        help="measure floor and run this many times up to 100k; report the best "
        "(default: 2 with --full, else 1)",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="measure only these (for profiling; run_again implies verify and rollback)",
    )
    parser.add_argument(
        "--output-dir", type=Path, help="where to write RESULTS.md, results.json, results.png"
    )
    args = parser.parse_args(argv)
    # A plain kill stops the benchmark like Ctrl-C, through the clean-up (its databases).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    sizes = args.sizes or (FULL_SIZES if args.full else QUICK_SIZES)
    naive_sizes = (
        args.naive_sizes
        if args.naive_sizes is not None
        else (FULL_NAIVE_SIZES if args.full else ())
    )
    output_dir = args.output_dir or (BENCH_DIR if args.full else None)
    wanted = args.backends.split(",") if args.backends else ["sqlite", "postgresql", "mariadb"]
    started = datetime.now(timezone.utc)
    load_start = f"{os.getloadavg()[0]:.2f}"
    opts = Options(
        sizes=sizes,
        naive_sizes=naive_sizes,
        batch_size=args.batch_size,
        repeat=max(1, args.repeat if args.repeat is not None else (2 if args.full else 1)),
        verify_references=not args.full,
        log=lambda text: print(text, flush=True),
        phases=frozenset(args.phases.split(",")),
    )
    workdir = Path(tempfile.mkdtemp(prefix=DB_PREFIX))
    run_tag = f"{os.getpid()}"
    backends: list[Backend] = []
    if "sqlite" in wanted:
        backends.append(SqliteBackend(workdir))
    if "postgresql" in wanted and args.postgresql_url:
        backends.append(PostgresBackend(args.postgresql_url, run_tag))
    if "mariadb" in wanted and args.mariadb_url:
        backends.append(MariadbBackend(args.mariadb_url, run_tag))
    results = Results()
    try:
        for backend in backends:
            for n in sizes:
                try:
                    bench_size(backend, n, opts, results)
                except Broken as exc:
                    results.failures.append(str(exc))
                    print(f"BROKEN: {exc}", file=sys.stderr, flush=True)
        load_end = f"{os.getloadavg()[0]:.2f}"
        print()
        print(tables(results))
        print()
        for name, ok, figures in targets(results):
            print(
                f"{'met    ' if ok else 'MISSED ' if ok is False else '       '} {name}: {figures}"
            )
        if output_dir is not None:
            write_outputs(
                results,
                backends,
                output_dir,
                sys.argv[1:] if argv is None else argv,
                started,
                (load_start, load_end),
            )
            print(f"\nwrote {output_dir / 'RESULTS.md'}")
    finally:
        for backend in backends:
            backend.close()
        shutil.rmtree(workdir, ignore_errors=True)
    if results.failures:
        print(f"\n{len(results.failures)} check(s) failed:", file=sys.stderr)
        for failure in results.failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    print(f"\nall checks passed ({time.perf_counter() - _T0:.0f} s)")
    return 0


_T0 = time.perf_counter()

if __name__ == "__main__":
    sys.exit(main())
