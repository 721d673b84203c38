"""The backfill's invariants, on every named state and every backend.

Each test names one invariant; its parameters say where it is checked, e.g.
``test_rollback_restores_the_database[mariadb-deleted_recipe]``. The states, and what the
backfill must do with each, are in ``states.py``; a failure prints the state, the backend, the
run ids involved and, for fingerprints, a row-level diff.

Tests that only read the database after one complete run share that run (``one_run``: one per
backend and state); tests that write (a second run, a rollback) get a database of their own.

The work package's own test strategy (WP04) maps onto these tests, on every state, plus its
T017 script as written on the sample data (the last test):

==============================  =================================================================
dry-run counts                  ``test_dry_run_counts_exactly_and_changes_nothing``
snapshots created               ``test_run_writes_exactly_what_the_plan_counted``
deleted recipes skipped         ``test_orphaned_runs_are_reported_and_never_given_a_snapshot``
idempotency                     ``test_second_run_writes_nothing``
production date used,           ``test_backfilled_snapshots_hold_the_recipes_current_data``
recipe data captured
verify counts                   ``test_verify_fails_before_and_passes_after``
==============================  =================================================================
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from snapshot_backfill import backfill
from snapshot_backfill.errors import LockedError
from snapshot_backfill.locking import migration_lock
from snapshot_backfill.models import production_runs, recipe_snapshots
from snapshot_backfill.testing import fingerprint
from snapshot_backfill.testing.backends import Backend
from snapshot_backfill.testing.expectations import StateInfo, describe, historical_cases
from snapshot_backfill.testing.fingerprint import Fingerprint, assert_same, explain
from snapshot_backfill.testing.invariants import (
    check_backfilled_content,
    check_links_after_run,
    check_plan,
    check_rollback_report,
    check_run_report,
    check_verify,
    check_writes,
)
from snapshot_backfill.testing.plugin import state_params
from snapshot_backfill.testing.running import rollback_backfill, run_backfill, sqlite_files


def _where(state: StateInfo, backend: Backend) -> dict[str, Any]:
    return describe(state, backend.describe())


def _run(engine: Engine, state: StateInfo) -> backfill.RunReport:
    return run_backfill(engine, state)


@dataclass
class OneRun:
    """A state's database before and after one complete run (shared by read-only tests)."""

    backend: Backend
    engine: Engine
    state: StateInfo
    planned: backfill.Plan
    verified_before: backfill.VerifyReport
    before: Fingerprint
    report: backfill.RunReport
    after: Fingerprint

    @property
    def where(self) -> dict[str, Any]:
        return _where(self.state, self.backend)


@pytest.fixture(scope="module", params=state_params())
def one_run(
    request: pytest.FixtureRequest,
    backend_kind: str,
    state_templates: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OneRun]:
    """Plan, verify, fingerprint, run, fingerprint: once per backend and state."""
    directory = tmp_path_factory.mktemp("one-run")
    with state_templates.provisioned(backend_kind, request.param, directory) as (backend, state):
        engine = backend.make_engine()
        planned = backfill.plan(engine)
        verified_before = backfill.verify(engine)
        before = fingerprint.take(engine)
        report = _run(engine, state)
        yield OneRun(
            backend,
            engine,
            state,
            planned,
            verified_before,
            before,
            report,
            fingerprint.take(engine),
        )


# --- dry run -------------------------------------------------------------------------------


def test_dry_run_counts_exactly_and_changes_nothing(
    backend: Backend, state: StateInfo, engine: Engine
) -> None:
    """plan counts every kind of run (and lists the orphans); plan and verify write nothing."""
    where = _where(state, backend)
    files_before = sqlite_files(backend.path) if backend.path is not None else {}
    before = fingerprint.take(engine)
    engine.dispose()

    check_plan(backfill.plan(engine), state, where)
    backfill.verify(engine)

    assert_same(before, fingerprint.take(engine), "plan/verify wrote to the database", where)
    if backend.path is not None:
        engine.dispose()  # every connection closed: SQLite removes its side files
        files_after = sqlite_files(backend.path)
        assert files_after == files_before, explain(
            "plan/verify changed the SQLite file's bytes",
            where,
            files_before=", ".join(f"{n} ({len(b)} bytes)" for n, b in files_before.items()),
            files_after=", ".join(f"{n} ({len(b)} bytes)" for n, b in files_after.items()),
            differing=", ".join(n for n in files_before if files_before[n] != files_after.get(n)),
        )


# --- one run -------------------------------------------------------------------------------


def test_run_writes_exactly_what_the_plan_counted(one_run: OneRun) -> None:
    """New snapshots for the runs to migrate, links for those and the dangling ones: no more."""
    planned, report, where = one_run.planned, one_run.report, one_run.where
    assert report.plan == planned, explain(
        "the run's plan is not the dry run's", where, dry_run=planned, run=report.plan
    )
    assert (report.migrated, report.linked_existing, report.skipped_orphans) == (
        planned.to_migrate,
        planned.to_link_existing,
        planned.orphaned,
    ), explain(
        "the run did not do what the dry run counted",
        where,
        planned=planned.to_dict(),
        reported=report.to_dict(),
    )
    check_run_report(report, one_run.state, where)
    check_writes(one_run.before, one_run.after, one_run.state, where)


def test_backfilled_snapshots_hold_the_recipes_current_data(one_run: OneRun) -> None:
    """is_backfilled, scale 1.0, snapshot_date = produced_at, the recipe's data as it is now;
    the snapshots that existed before (the application's) are untouched."""
    check_backfilled_content(one_run.engine, one_run.state, one_run.where)
    check_links_after_run(one_run.engine, one_run.state, one_run.where)
    changed = fingerprint.changed_rows(one_run.before, one_run.after, "recipe_snapshots")
    touched = sorted(int(k[0]) for k in changed["changed"] | changed["removed"])
    assert not touched, explain(
        "snapshots that existed before the run (the application's) were changed or deleted",
        one_run.where,
        snapshot_ids=touched,
        differences=one_run.before.diff(one_run.after),
    )


def test_orphaned_runs_are_reported_and_never_given_a_snapshot(one_run: OneRun) -> None:
    state, where = one_run.state, one_run.where
    orphans = sorted(state.orphaned)
    assert list(one_run.planned.orphaned_run_ids) == orphans, explain(
        "the plan must list exactly the orphaned runs",
        where,
        expected=orphans,
        planned=one_run.planned.orphaned_run_ids,
    )
    assert one_run.report.skipped_orphans == len(orphans), explain(
        "the run must report every orphan it skipped",
        where,
        expected=len(orphans),
        reported=one_run.report.skipped_orphans,
    )
    assert list(one_run.verified_before.orphaned_run_ids) == orphans
    check_links_after_run(one_run.engine, state, where)


def test_verify_fails_before_and_passes_after(one_run: OneRun) -> None:
    state, where = one_run.state, one_run.where
    check_verify(
        one_run.verified_before, state, where, after_run=False, snapshots=len(state.snapshot_ids)
    )
    check_verify(
        backfill.verify(one_run.engine),
        state,
        where,
        after_run=True,
        snapshots=len(state.snapshot_ids) + len(state.to_migrate),
    )


# --- after a run ---------------------------------------------------------------------------


def test_second_run_writes_nothing(backend: Backend, state: StateInfo, engine: Engine) -> None:
    where = _where(state, backend)
    _run(engine, state)
    after_first = fingerprint.take(engine)

    again = _run(engine, state)

    assert (again.migrated, again.linked_existing, again.batches, again.errors) == (0, 0, 0, []), (
        explain("a second run found work", where, report=again.to_dict())
    )
    assert (again.plan.to_migrate, again.plan.to_link_existing) == (0, 0), explain(
        "after a run the plan still counts work", where, plan=again.plan.to_dict()
    )
    assert_same(
        after_first, fingerprint.take(engine), "the second run wrote to the database", where
    )


def test_a_no_op_run_given_its_plan_neither_locks_nor_plans_again(
    backend: Backend, build_state: Callable[[str], StateInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    info = build_state("already_migrated")
    engine = backend.make_engine()
    the_plan = backfill.plan(engine)
    assert the_plan.work == 0, explain("already_migrated has work", {"backend": backend.describe()})
    planned: list[int] = []
    real_plan = backfill._plan
    monkeypatch.setattr(backfill, "_plan", lambda conn: planned.append(1) or real_plan(conn))
    before = fingerprint.take(engine)

    with migration_lock(engine, timeout=1):
        with pytest.raises(LockedError):
            backfill.run(engine, lock_timeout=0)
        report = backfill.run(engine, lock_timeout=0, known_plan=the_plan)

    assert planned == [], "a run given a plan that found nothing must not plan again"
    assert report.plan is the_plan
    assert (report.migrated, report.linked_existing, report.batches) == (0, 0, 0)
    assert report.skipped_orphans == len(info.orphaned)
    assert_same(
        before, fingerprint.take(engine), "a no-op run wrote", {"backend": backend.describe()}
    )


def test_a_plan_that_found_work_is_made_again_under_the_lock(
    backend: Backend, build_state: Callable[[str], StateInfo]
) -> None:
    info = build_state("partially_migrated")
    engine = backend.make_engine()
    stale = backfill.plan(engine)
    assert stale.work == len(info.work) > 0
    backfill.run(engine, batch_size=info.batch_size)  # someone finishes the job meanwhile

    report = backfill.run(engine, batch_size=info.batch_size, known_plan=stale)

    assert report.plan.work == 0, explain(
        "the stale plan was trusted", {"backend": backend.describe()}
    )
    assert (report.migrated, report.linked_existing) == (0, 0)


def test_rollback_restores_the_database(backend: Backend, state: StateInfo, engine: Engine) -> None:
    where = _where(state, backend)
    before = fingerprint.take(engine)
    _run(engine, state)

    report = rollback_backfill(engine, state)

    check_rollback_report(report, state, where)
    assert_same(
        before,
        fingerprint.take(engine),
        "rollback did not restore the database as it was before the run",
        where,
    )
    again = rollback_backfill(engine, state)
    assert again.journal_entries == 0, explain(
        "a second rollback found work", where, report=again.to_dict()
    )


# --- batch boundaries ---------------------------------------------------------------------

# partially_migrated has 24 unlinked runs: batches of one, of three and seven (which end on an
# orphan or a dangling snapshot), exactly all of them, and more than all of them. The servers
# (same Python, other SQL) get the telling ones.
BATCH_SIZES = {"sqlite": (1, 3, 7, 24, 25), "postgresql": (1, 7, 25), "mariadb": (1, 7, 25)}


def test_every_batch_size_walks_each_unlinked_run_once(
    backend: Backend, build_state: Callable[[str], StateInfo]
) -> None:
    """Whatever the batch size: ceil(unlinked / size) batches, progress that only grows, and
    the same database at the end (normalized: uuids and timestamps aside)."""
    reference: Optional[Fingerprint] = None
    sizes = BATCH_SIZES[backend.kind]
    for size in sizes:
        state = dataclasses.replace(build_state("partially_migrated"), batch_size=size)
        where = {**_where(state, backend), "batch size": size}
        engine = backend.make_engine()
        progress: list[backfill.Progress] = []

        started = time.monotonic()
        report = run_backfill(engine, state, on_progress=progress.append)
        elapsed = time.monotonic() - started

        check_run_report(report, state, where)
        done = [p.done for p in progress]
        assert done == sorted(done) and done[-1:] == [len(state.work)], explain(
            "progress must grow to the work planned", where, progress=done
        )
        # The time since the first batch began, for the rate and the ETA: growing, within the call.
        times = [p.elapsed_s for p in progress]
        assert times == sorted(times) and times[0] > 0 and times[-1] <= elapsed, explain(
            "progress must time the batches since the first began", where, times=times
        )
        found = fingerprint.take(engine, normalized=True)
        if reference is None:
            reference = found
        assert_same(reference, found, f"batch size {size} ends elsewhere than {sizes[0]}", where)


# --- the states themselves ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["partially_migrated", "real_schema", pytest.param("large", marks=pytest.mark.slow)]
)
def test_the_state_holds_every_historical_case(
    backend: Backend, build_state: Callable[[str], StateInfo], name: str
) -> None:
    """Orphans, both kinds of links, dangling snapshots, archived, variant, ingredient-less and
    missing-ingredient recipes with runs to migrate: really there (a trait that did nothing
    would leave the invariants above untested on that case)."""
    build_state(name)
    cases = historical_cases(backend.make_engine())
    absent = [case for case, runs in cases.items() if not runs]
    assert not absent, explain(
        f"state {name} lacks historical cases",
        {"backend": backend.describe()},
        absent="\n".join(absent),
        present="\n".join(f"{case}: runs {runs[:10]}" for case, runs in cases.items() if runs),
    )


# --- the work package's T017, as written ---------------------------------------------------


def test_work_package_t017_migration_with_sample_data(
    backend: Backend, build_state: Callable[[str], StateInfo]
) -> None:
    """WP04 T017: load sample_data.json, dry run, check counts, run, every run migrated."""
    # 1. Reset database with sample data
    sample = build_state("from_sample_data")
    engine = backend.make_engine()
    where = describe(sample, backend.describe())

    # 2. Run dry-run; 3. Verify expected counts
    stats = backfill.plan(engine)
    assert stats.to_migrate > 0, "should have runs to migrate"
    assert stats.to_migrate == len(sample.to_migrate), explain("dry-run count", where)
    assert stats.orphaned_run_ids == sorted(sample.orphaned), "deleted recipes are listed"

    # 4. Run actual migration
    report = run_backfill(engine, sample)
    assert report.errors == [], "should have no errors"
    assert report.migrated == stats.to_migrate

    # 5. Verify all runs migrated (but the deleted recipes' runs, which are skipped)
    with engine.connect() as conn:
        unmigrated = (
            conn.execute(
                select(production_runs.c.id)
                .where(production_runs.c.recipe_snapshot_id.is_(None))
                .order_by(production_runs.c.id)
            )
            .scalars()
            .all()
        )
        # 6. Verify is_backfilled (the sample's own snapshots include backfilled ones)
        backfilled = conn.execute(
            select(func.count())
            .select_from(recipe_snapshots)
            .where(
                recipe_snapshots.c.is_backfilled == True,
                recipe_snapshots.c.id.not_in(sample.snapshot_ids or [-1]),
            )
        ).scalar_one()
    assert unmigrated == sorted(sample.orphaned), explain(
        "runs left unlinked", where, found=unmigrated
    )
    assert backfilled == report.migrated, "all should be backfilled"

    # Idempotent, and verify counts every run and snapshot.
    assert run_backfill(engine, sample).migrated == 0
    verified = backfill.verify(engine)
    assert verified.ok, [p.detail for p in verified.problems]
    assert (verified.runs_checked, verified.snapshots_checked) == (
        sample.total_runs,
        len(sample.snapshot_ids) + report.migrated,
    )
    assert verified.orphaned_run_ids == sorted(sample.orphaned)
