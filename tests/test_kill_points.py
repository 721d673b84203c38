"""SIGKILL of ``run``, ``rollback`` and ``upgrade-schema`` at several points, then resume.

Each command is a real process (``python -m snapshot_backfill``) on a database big enough for
many batches; it is killed once it has committed part of its work (the journal's row count,
polled) or a given time after it starts writing (upgrade-schema, which has no journal), then
the same command runs again to the end. The result must equal an uninterrupted run's (made
once per backend): the same counts, no run linked twice or to a snapshot not its own, and
``verify`` exit 0.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from snapshot_backfill import backfill
from snapshot_backfill.database import sqlite_path, sqlite_uri
from snapshot_backfill.errors import EXIT_OK
from snapshot_backfill.journal import JOURNAL_TABLE_NAME
from snapshot_backfill.models import production_runs, recipe_snapshots
from snapshot_backfill.testing import blueprint, expectations, fingerprint, schema_images
from snapshot_backfill.testing.backends import Backend

pytestmark = [
    pytest.mark.slow,
    pytest.mark.process,
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL"),
]

PROCESS_TIMEOUT_S = 120
BATCH = "50"
# Kill once this share of the work is journaled (run) or undone (rollback).
SHARES = [
    pytest.param(0.0, id="first-batch"),
    pytest.param(0.4, id="40%"),
    pytest.param(0.8, id="80%"),
]
# Seconds after upgrade-schema starts writing.
UPGRADE_DELAYS = [pytest.param(d, id=f"{int(d * 1000)}ms") for d in (0.0, 0.05, 0.15, 0.4)]

_started: list[subprocess.Popen[str]] = []


def start(backend: Backend, *argv: str) -> subprocess.Popen[str]:
    """``snapshot-backfill ARGV --database-url ...`` in a new process, output unbuffered."""
    process = subprocess.Popen(
        [sys.executable, "-m", "snapshot_backfill", *argv, "--database-url", backend.cli_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    _started.append(process)
    return process


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=PROCESS_TIMEOUT_S)
    return process.returncode, out, err


def cli(backend: Backend, *argv: str) -> tuple[int, str, str]:
    return finish(start(backend, *argv))


@pytest.fixture(autouse=True)
def _no_stray_processes() -> Iterator[None]:
    yield
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=PROCESS_TIMEOUT_S)


def journal_rows(engine: Engine) -> Optional[int]:
    """The journal's row count (None: no journal table)."""
    path = sqlite_path(engine.url) if engine.dialect.name == "sqlite" else None
    if path is not None:
        return _sqlite_journal_rows(path)
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(JOURNAL_TABLE_NAME):
            return None
        count = conn.exec_driver_sql(f"SELECT count(*) FROM {JOURNAL_TABLE_NAME}").scalar()
        conn.rollback()
        return int(count or 0)


def _sqlite_journal_rows(path: Path) -> Optional[int]:
    """Read the count between the writer's commits: SQLite's busy handler, which sleeps up to
    100 ms between tries, can miss every gap of a writer that commits every few ms, so this
    polls with no busy timeout and retries at once."""
    while True:
        conn = sqlite3.connect(f"{sqlite_uri(path)}?mode=rw", uri=True, timeout=0)
        try:
            found = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
                (JOURNAL_TABLE_NAME,),
            ).fetchone()[0]
            if not found:
                return None
            return int(conn.execute(f"SELECT count(*) FROM {JOURNAL_TABLE_NAME}").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        finally:
            conn.close()
        time.sleep(0.0005)


def kill_when(process: subprocess.Popen[str], reached: Any, what: str) -> None:
    """SIGKILL ``process`` as soon as ``reached()`` holds; fail if it ended first."""
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while not reached():
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"the process ended (exit {process.returncode}) before {what}:\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"the process did not reach {what} in time")
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=PROCESS_TIMEOUT_S)
    assert process.returncode == -signal.SIGKILL, "killed before it could end by itself"


def assert_each_run_linked_once(engine: Engine, info: expectations.StateInfo, where: str) -> None:
    """Every run of the work linked to one snapshot of its own; verify exit 0."""
    with engine.connect() as conn:
        per_run = dict(
            conn.execute(
                sa.select(recipe_snapshots.c.production_run_id, sa.func.count()).group_by(
                    recipe_snapshots.c.production_run_id
                )
            ).all()
        )
        links = dict(
            conn.execute(
                sa.select(production_runs.c.id, recipe_snapshots.c.production_run_id).select_from(
                    production_runs.join(
                        recipe_snapshots,
                        recipe_snapshots.c.id == production_runs.c.recipe_snapshot_id,
                    )
                )
            ).all()
        )
    assert all(count == 1 for count in per_run.values()), f"{where}: a run has two snapshots"
    assert all(run == owner for run, owner in links.items()), f"{where}: a foreign snapshot"
    assert set(info.work) <= set(links), f"{where}: runs left unlinked"
    verified = backfill.verify(engine)
    assert verified.ok, f"{where}: verify failed: {[p.detail for p in verified.problems[:5]]}"


@dataclass
class Reference:
    state: expectations.StateInfo
    after: fingerprint.Fingerprint
    report: dict[str, Any]


@pytest.fixture(scope="module")
def run_reference(
    backend_kind: str, state_templates: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Reference]:
    """State ``large`` after one uninterrupted ``run`` process, per backend."""
    directory = tmp_path_factory.mktemp("reference-run")
    with state_templates.provisioned(backend_kind, "large", directory) as (backend, info):
        code, out, err = cli(
            backend, "run", "--yes", "--no-backup", "--json", "--batch-size", BATCH
        )
        assert code == EXIT_OK, err
        engine = backend.make_engine()
        yield Reference(info, fingerprint.take(engine, normalized=True), json.loads(out))


@pytest.mark.parametrize("share", SHARES)
def test_sigkill_of_run_then_resume_equals_an_uninterrupted_run(
    run_reference: Reference, backend: Backend, state_templates: Any, share: float
) -> None:
    info = state_templates.restore(backend, "large")
    engine = backend.make_engine()
    at_least = max(1, int(len(info.work) * share))
    process = start(backend, "run", "--yes", "--no-backup", "--json", "--batch-size", BATCH)
    kill_when(process, lambda: (journal_rows(engine) or 0) >= at_least, f"{at_least} links")
    done = journal_rows(engine) or 0
    assert at_least <= done < len(info.work), "killed part-way"

    code, out, err = cli(backend, "run", "--yes", "--no-backup", "--json", "--batch-size", BATCH)
    assert code == EXIT_OK, err
    resumed = json.loads(out)
    first = run_reference.report
    assert resumed["migrated"] + resumed["linked_existing"] == len(info.work) - done
    assert journal_rows(engine) == first["migrated"] + first["linked_existing"]
    assert_each_run_linked_once(engine, info, f"{backend.describe()}, killed after {done}")
    fingerprint.assert_same(
        run_reference.after,
        fingerprint.take(engine, normalized=True),
        "killed run + resumed run differs from an uninterrupted run",
        {"backend": backend.describe(), "killed after links": done},
    )


@pytest.mark.parametrize("share", SHARES)
def test_sigkill_of_rollback_then_resume_restores_the_database(
    backend: Backend, state_templates: Any, share: float
) -> None:
    info = state_templates.restore(backend, "large")
    engine = backend.make_engine()
    before = fingerprint.take(engine)
    report = backfill.run(engine, batch_size=int(BATCH))
    assert report.ok
    total = journal_rows(engine)
    assert total == len(info.work)
    undone = max(1, int(total * share))
    # SQLite's rollback batches are quick (~5 ms for 50); its default pause between them
    # (0.12 s) leaves the poll the time to stop it part-way.
    process = start(backend, "rollback", "--yes", "--no-backup", "--json", "--batch-size", BATCH)

    def undone_enough() -> bool:
        left = journal_rows(engine)
        return left is not None and left <= total - undone

    kill_when(
        process,
        undone_enough,
        f"{undone} journal entries undone",
    )
    left = journal_rows(engine)
    assert left is not None and 0 < left <= total - undone, "killed part-way"

    code, out, err = cli(
        backend, "rollback", "--yes", "--no-backup", "--json", "--batch-size", BATCH
    )
    assert code == EXIT_OK, err
    assert json.loads(out)["journal_entries"] == left
    assert journal_rows(engine) is None, "the journal is dropped once empty"
    fingerprint.assert_same(
        before,
        fingerprint.take(engine),
        "killed rollback + resumed rollback differs from the database before the run",
        {"backend": backend.describe(), "journal entries left at the kill": left},
    )
    # And the plan is the one of before the backfill: every run to do again.
    again = backfill.plan(engine)
    assert (again.to_migrate, again.to_link_existing) == (
        len(info.to_migrate),
        len(info.to_link_existing),
    )


@dataclass
class UpgradeReference:
    state: expectations.StateInfo
    schema: Any
    data: fingerprint.Fingerprint
    run: dict[str, Any]


@pytest.fixture(scope="module")
def upgrade_reference(
    backend_kind: str, state_templates: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UpgradeReference]:
    """The pre-snapshot state after one uninterrupted upgrade-schema, then run, per backend."""
    directory = tmp_path_factory.mktemp("reference-upgrade")
    name = blueprint.PRE_SNAPSHOT_SCHEMA
    with state_templates.provisioned(backend_kind, name, directory) as (backend, info):
        code, _, err = cli(backend, "upgrade-schema", "--yes", "--no-backup")
        assert code == EXIT_OK, err
        engine = backend.make_engine()
        schema = schema_images.upgraded_schema_fingerprint(engine)
        data = fingerprint.take(engine, normalized=True)
        code, out, err = cli(backend, "run", "--yes", "--no-backup", "--json")
        assert code == EXIT_OK, err
        yield UpgradeReference(info, schema, data, json.loads(out))


@pytest.mark.parametrize("delay", UPGRADE_DELAYS)
def test_sigkill_of_upgrade_schema_then_resume_equals_an_uninterrupted_upgrade(
    upgrade_reference: UpgradeReference, backend: Backend, state_templates: Any, delay: float
) -> None:
    info = state_templates.restore(backend, blueprint.PRE_SNAPSHOT_SCHEMA)
    engine = backend.make_engine()
    process = start(backend, "upgrade-schema", "--yes", "--no-backup")
    # It prints what the database lacks just before it takes the lock and writes.
    assert process.stdout is not None
    line = process.stdout.readline()
    assert " lacks: " in line, line + (process.stderr.read() if process.stderr else "")
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=PROCESS_TIMEOUT_S)

    code, out, err = cli(backend, "upgrade-schema", "--yes", "--no-backup")
    assert code == EXIT_OK, f"{out}\n{err}"
    schema_images.assert_same_schema(
        schema_images.upgraded_schema_fingerprint(engine),
        upgrade_reference.schema,
        f"{backend.describe()}: upgrade killed after {delay}s, then resumed",
    )
    fingerprint.assert_same(
        upgrade_reference.data,
        fingerprint.take(engine, normalized=True),
        "killed upgrade + resumed upgrade holds other rows than an uninterrupted upgrade",
        {"backend": backend.describe(), "killed after s": delay},
    )
    code, out, err = cli(backend, "run", "--yes", "--no-backup", "--json")
    assert code == EXIT_OK, err
    report = json.loads(out)
    expected = upgrade_reference.run
    assert (report["migrated"], report["linked_existing"], report["skipped_orphans"]) == (
        expected["migrated"],
        expected["linked_existing"],
        expected["skipped_orphans"],
    )
    assert_each_run_linked_once(engine, info, f"{backend.describe()}, upgrade killed")
