"""Real processes: two migrators at once, the application writing meanwhile, SIGKILL, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from snapshot_backfill import backfill, pacing
from snapshot_backfill.errors import EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_OK, RunAbortedError
from snapshot_backfill.journal import JOURNAL_TABLE_NAME
from snapshot_backfill.models import new_uuid, production_runs, recipe_snapshots, utc_now
from snapshot_backfill.testing import expectations, fingerprint, states
from snapshot_backfill.testing.backends import Backend

from platforms import POSIX_SIGNALS

pytestmark = pytest.mark.slow

PROCESS_TIMEOUT_S = 180


def start_migrator(backend: Backend, *extra: str) -> subprocess.Popen[str]:
    """Start ``snapshot-backfill run`` on the backend's database in a new process."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snapshot_backfill",
            "run",
            "--database-url",
            backend.cli_url,
            "--yes",
            "--no-backup",
            "--json",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    _started.append(process)
    return process


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=PROCESS_TIMEOUT_S)
    return process.returncode, stdout, stderr


def journal_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(JOURNAL_TABLE_NAME):
            return 0
        count = conn.exec_driver_sql(f"SELECT count(*) FROM {JOURNAL_TABLE_NAME}").scalar()
        conn.rollback()
        return int(count or 0)


def wait_for_journal(engine: Engine, process: subprocess.Popen[str], at_least: int) -> None:
    """Wait until the migrator has committed ``at_least`` links (or fail if it ended first)."""
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while journal_rows(engine) < at_least:
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(
                f"the migrator ended (exit {process.returncode}) before {at_least} links:\n{err}"
            )
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the migrator did not commit {at_least} links in time")
        time.sleep(0.01)


def snapshot_counts(engine: Engine) -> dict[int, int]:
    """Snapshots per production run."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(recipe_snapshots.c.production_run_id, sa.func.count()).group_by(
                recipe_snapshots.c.production_run_id
            )
        ).all()
    return {int(run): int(count) for run, count in rows}


def assert_every_run_done_once(engine: Engine, info: expectations.StateInfo, where: str) -> None:
    counts = snapshot_counts(engine)
    assert all(c == 1 for c in counts.values()), f"{where}: a run has two snapshots: {counts}"
    report = backfill.verify(engine)
    assert report.ok, f"{where}: verify failed: {[p.detail for p in report.problems[:5]]}"
    assert sorted(report.orphaned_run_ids) == sorted(info.orphaned), where


@pytest.mark.process
@pytest.mark.parametrize("second_timeout", ["60", "0"], ids=["second-waits", "second-gives-up"])
def test_two_migrators_at_once_create_one_snapshot_per_run(
    backend: Backend, build_state: Any, second_timeout: str
) -> None:
    info = build_state("large")
    engine = backend.make_engine()
    first = start_migrator(backend, "--batch-size", "50", "--lock-timeout", "60")
    second = start_migrator(backend, "--batch-size", "50", "--lock-timeout", second_timeout)
    results = [finish(first), finish(second)]
    codes = sorted(code for code, _, _ in results)
    allowed = [[EXIT_OK, EXIT_OK]] + ([[EXIT_OK, EXIT_LOCKED]] if second_timeout == "0" else [])
    assert codes in allowed, results
    reports = [json.loads(out) for code, out, _ in results if code == EXIT_OK]
    migrated = sum(r["migrated"] for r in reports)
    linked = sum(r["linked_existing"] for r in reports)
    assert (migrated, linked) == (len(info.to_migrate), len(info.to_link_existing)), reports
    for code, _, err in results:
        if code == EXIT_LOCKED:
            assert "another snapshot-backfill is working on" in err
    assert_every_run_done_once(engine, info, backend.describe())


def _insert_application_runs(engine: Engine, template: dict[str, Any], count: int) -> list[int]:
    """Record runs the way the application does: one short transaction per run."""
    ids = []
    for n in range(count):
        now = utc_now()
        row = {**template, "uuid": new_uuid(), "created_at": now, "updated_at": now}
        row["notes"] = f"recorded while the migrator ran ({n})"
        with engine.begin() as conn:
            ids.append(
                int(conn.execute(sa.insert(production_runs).values(**row)).inserted_primary_key[0])
            )
        time.sleep(0.005)
    return ids


@pytest.mark.process
def test_the_application_keeps_recording_runs_meanwhile(backend: Backend, build_state: Any) -> None:
    info = build_state("large")
    # The application's own settings: a 5 s busy timeout on SQLite (SQLAlchemy's default).
    app = backend.make_engine(busy_timeout=5.0) if backend.is_sqlite else backend.make_engine()
    with app.connect() as conn:
        template = dict(
            conn.execute(
                sa.select(production_runs).where(production_runs.c.id == info.to_migrate[0])
            )
            .mappings()
            .one()
        )
    for column in ("id", "uuid", "created_at", "updated_at", "recipe_snapshot_id"):
        template.pop(column)
    template["produced_at"] = datetime(2026, 11, 1, 9, 30)

    migrator = start_migrator(backend, "--batch-size", "20")
    wait_for_journal(app, migrator, 1)
    new_ids = _insert_application_runs(app, template, 40)
    code, out, err = finish(migrator)
    assert code == EXIT_OK, err
    assert len(new_ids) == 40, "every run the application recorded must have been written"

    # Whatever the first pass did not reach, a second pass finishes.
    again = backfill.run(app, batch_size=info.batch_size)
    first = json.loads(out)
    assert first["migrated"] + again.migrated == len(info.to_migrate) + len(new_ids)
    expected = expectations.StateInfo(name="large+app", orphaned=info.orphaned)
    assert_every_run_done_once(app, expected, backend.describe())


@pytest.mark.process
def test_on_sqlite_a_waiting_application_waits_for_one_batch_not_for_the_run(
    sqlite_backend: Backend,
) -> None:
    """SQLite hands no lock over: a waiting connection sleeps and tries again (up to 100 ms
    apart) and misses a gap shorter than that. Batches back to back kept the application
    waiting through dozens of them; the default pause between batches lets it in after one."""
    engine = sqlite_backend.make_engine()
    states.build_state("large", engine)
    # The application's own connection: Python's sqlite3 with a 5 s busy timeout.
    app = sa.create_engine(sqlite_backend.url, connect_args={"timeout": 5.0}, poolclass=NullPool)
    batch = 5
    migrator = start_migrator(
        sqlite_backend, "--batch-size", str(batch), "--max-batch-seconds", "0"
    )
    wait_for_journal(engine, migrator, 2 * batch)
    waited = []
    for n in range(4):
        before = journal_rows(engine)
        with app.begin() as conn:
            conn.execute(
                sa.update(production_runs)
                .where(production_runs.c.id == 1 + n)
                .values(notes=f"edited while the migrator ran ({n})")
            )
        waited.append((journal_rows(engine) - before) / batch)
    still_running = migrator.poll() is None
    migrator.kill()
    assert still_running, "the run ended before the application wrote: nothing was measured"
    # The batch in progress when the application asked, and at most one more (a slow wakeup).
    assert max(waited) <= 2, f"batches committed while the application waited: {waited}"


@pytest.mark.process
def test_the_default_pause_is_sqlites_only(backend: Backend, build_state: Any) -> None:
    build_state("from_sample_data")
    code, out, err = finish(start_migrator(backend))
    assert code == EXIT_OK, err
    expected = pacing.SQLITE_DEFAULT_PAUSE_S if backend.is_sqlite else 0.0
    assert json.loads(out)["pause_s"] == expected
    assert expected == 0.0 or expected > pacing.SQLITE_LONGEST_BUSY_SLEEP_S


@pytest.mark.process
@POSIX_SIGNALS
@pytest.mark.parametrize("links_before_kill", [1, 120, 700])
def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(
    backend: Backend, links_before_kill: int
) -> None:
    engine = backend.make_engine()
    info = states.build_state("large", engine)
    reference = backend.sibling()
    reference_engine = reference.make_engine()
    states.build_state("large", reference_engine)
    backfill.run(reference_engine, batch_size=25)

    process = start_migrator(backend, "--batch-size", "25")
    wait_for_journal(engine, process, links_before_kill)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=PROCESS_TIMEOUT_S)
    assert process.returncode == -signal.SIGKILL

    done_before = journal_rows(engine)
    assert links_before_kill <= done_before < len(info.work), "killed mid-run, not after"
    report = backfill.run(engine, batch_size=25, lock_timeout=30)
    assert report.migrated + report.linked_existing == len(info.work) - done_before
    fingerprint.assert_same(
        fingerprint.take(reference_engine, normalized=True),
        fingerprint.take(engine, normalized=True),
        "killed run + re-run differs from an uninterrupted run",
        {"backend": backend.describe(), "killed after links": done_before},
    )


@pytest.mark.process
@POSIX_SIGNALS
def test_ctrl_c_keeps_committed_batches_prints_a_summary_and_exits_130(
    backend: Backend, build_state: Any
) -> None:
    info = build_state("large")
    engine = backend.make_engine()
    process = start_migrator(backend, "--batch-size", "10")
    wait_for_journal(engine, process, 30)
    process.send_signal(signal.SIGINT)
    code, out, err = finish(process)
    assert code == EXIT_INTERRUPTED, err
    summary = json.loads(out)
    assert summary["interrupted"] is True
    kept = journal_rows(engine)
    assert summary["migrated"] + summary["linked_existing"] == kept
    assert "interrupted" in err and "run again" in err

    rest = backfill.run(engine, batch_size=50)
    assert rest.migrated + rest.linked_existing == len(info.work) - kept
    assert_every_run_done_once(engine, info, backend.describe())


@pytest.mark.process
@POSIX_SIGNALS
def test_sigterm_stops_like_ctrl_c(sqlite_backend: Backend) -> None:
    engine = sqlite_backend.make_engine()
    states.build_state("large", engine)
    process = start_migrator(sqlite_backend, "--batch-size", "10")
    wait_for_journal(engine, process, 30)
    process.send_signal(signal.SIGTERM)
    code, out, _ = finish(process)
    assert code == EXIT_INTERRUPTED
    assert json.loads(out)["interrupted"] is True


_started: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_stray_migrators() -> Iterator[None]:
    """Never leave a migrator running (or its pipes open) after a test, failed or not."""
    yield
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=PROCESS_TIMEOUT_S)


def test_a_batch_changed_under_the_migrator_is_rolled_back_and_a_rerun_finishes(
    backend: Backend, build_state: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that ignores the batch's locks: the counts would lie, so the run stops."""
    info = build_state("partially_migrated")
    engine = backend.make_engine()
    read_batch = backfill._next_batch
    changed: list[Any] = []

    def next_batch_then_link_one(conn: sa.Connection, after: int, size: int, *rest: Any) -> Any:
        batch = read_batch(conn, after, size, *rest)
        if batch is not None and batch.link and not changed:
            run = batch.link[0]
            conn.execute(
                sa.update(production_runs)
                .where(production_runs.c.id == run.id)
                .values(recipe_snapshot_id=run.snapshot_id)
            )
            changed.append(batch)
        return batch

    monkeypatch.setattr(backfill, "_next_batch", next_batch_then_link_one)
    with pytest.raises(
        RunAbortedError,
        match="another writer changed them meanwhile; the batch was rolled back, "
        "run again to finish the job",
    ):
        backfill.run(engine, batch_size=info.batch_size)
    assert changed, "the state must have a batch with a run to link to its existing snapshot"
    batch = changed[0]
    batch_runs = [r.id for r in (*batch.link, *batch.migrate)]
    with engine.connect() as conn:
        linked_in_batch = conn.execute(
            sa.select(production_runs.c.id).where(
                production_runs.c.id.in_(batch_runs),
                production_runs.c.recipe_snapshot_id.is_not(None),
            )
        ).all()
        snapshots_of_batch = conn.execute(
            sa.select(recipe_snapshots.c.id).where(
                recipe_snapshots.c.production_run_id.in_([r.id for r in batch.migrate])
            )
        ).all()
    assert linked_in_batch == [], "nothing of the changed batch may be kept"
    assert snapshots_of_batch == [], "the changed batch's snapshots must be rolled back"
    done_before = journal_rows(engine)
    assert done_before == len([r for r in info.work if r < min(batch_runs)])

    monkeypatch.setattr(backfill, "_next_batch", read_batch)
    again = backfill.run(engine, batch_size=info.batch_size)
    assert again.migrated + again.linked_existing == len(info.work) - done_before
    assert_every_run_done_once(engine, info, backend.describe())


def test_a_batch_that_creates_fewer_snapshots_than_it_migrates_is_rolled_back(
    backend: Backend, build_state: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other count the batch checks: a recipe's payload missing from the payload table
    would leave its runs without a snapshot, linked to nothing; the run stops instead."""
    info = build_state("from_sample_data")
    engine = backend.make_engine()
    before = fingerprint.take(engine)
    store = backfill.store_payloads
    dropped: list[int] = []

    def store_all_but_one(conn: sa.Connection, payloads: dict[int, Any]) -> None:
        if payloads and not dropped:
            dropped.append(min(payloads))
        store(conn, {k: v for k, v in payloads.items() if k not in dropped})

    monkeypatch.setattr(backfill, "store_payloads", store_all_but_one)
    with pytest.raises(RunAbortedError, match=r"created \d+ snapshots for \d+ runs: a payload is"):
        backfill.run(engine, batch_size=backfill.MAX_BATCH_SIZE)
    assert dropped
    fingerprint.assert_same(before, fingerprint.take(engine), "the aborted batch was kept")

    monkeypatch.setattr(backfill, "store_payloads", store)
    again = backfill.run(engine)
    assert again.ok and again.migrated == len(info.to_migrate), again
    assert_every_run_done_once(engine, info, backend.describe())
