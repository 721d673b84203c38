"""What ``rollback`` does, pinned: its batches, its progress, its report and each case of undo.

Every test runs the backfill over the sample data (53 links: 51 new snapshots, 2 existing ones
linked) on every backend, then rolls it back. Batching is counted on the engine: each committed
transaction that deletes journal rows is one batch. The cases of undo are those the journal can
meet: a run untouched since the link (unlinked, its ``updated_at`` restored), a run the
application changed since (unlinked, the application's ``updated_at`` kept), a run the
application linked to another snapshot (left alone), a created snapshot another run now links
(kept), and a journal that is empty or absent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from snapshot_backfill import backfill
from snapshot_backfill.errors import BadInputError, InterruptedRunError
from snapshot_backfill.journal import JOURNAL_TABLE_NAME, create_journal, journal
from snapshot_backfill.models import production_runs, recipe_snapshots
from snapshot_backfill.testing import expectations, fingerprint, running
from snapshot_backfill.testing.backends import Backend

runs = production_runs
snaps = recipe_snapshots
# What the application writes when it edits a run after the backfill linked it.
EDITED_AT = datetime(2026, 1, 2, 3, 4, 5)


class Interrupted(Exception):
    """Raised by a test between two batches, or inside one."""


@dataclass
class Transactions:
    """The statements of every committed transaction on an engine, in order."""

    committed: list[list[str]] = field(default_factory=list)
    current: list[str] = field(default_factory=list)

    @property
    def journal_batches(self) -> list[list[str]]:
        """The committed transactions that deleted journal rows: rollback's batches."""
        return [t for t in self.committed if any(_deletes_journal(s) for s in t)]


def _deletes(statement: str, table: str) -> bool:
    words = " ".join(statement.split()).upper()
    return words.startswith("DELETE FROM") and table.upper() in words.split(" WHERE ")[0]


def _deletes_journal(statement: str) -> bool:
    return _deletes(statement, JOURNAL_TABLE_NAME)


@pytest.fixture
def transactions(engine: Engine) -> Iterator[Transactions]:
    """Record, on ``engine``, the statements of each transaction that commits."""
    seen = Transactions()

    def on_begin(conn: Any) -> None:
        seen.current = []

    def on_statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.current.append(statement)

    def on_commit(conn: Any) -> None:
        seen.committed.append(seen.current)
        seen.current = []

    listeners = (("begin", on_begin), ("after_cursor_execute", on_statement), ("commit", on_commit))
    for name, listener in listeners:
        event.listen(engine, name, listener)
    yield seen
    for name, listener in listeners:
        event.remove(engine, name, listener)


@dataclass
class RunDone:
    """The sample data, fingerprinted, then backfilled; what the journal holds."""

    engine: Engine
    info: expectations.StateInfo
    before: fingerprint.Fingerprint
    updated_at_before: dict[int, Any]
    journaled: dict[int, tuple[int, bool]]  # run id -> (snapshot id, created by the run)

    @property
    def entries(self) -> int:
        return len(self.journaled)

    def snapshot_of(self, run_id: int) -> int:
        return self.journaled[run_id][0]


def _updated_at(engine: Engine) -> dict[int, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(runs.c.id, runs.c.updated_at)).all())


@pytest.fixture
def run_done(backend: Backend, build_state: Any, engine: Engine) -> RunDone:
    info = build_state("from_sample_data")
    before = fingerprint.take(engine)
    updated_at_before = _updated_at(engine)
    report = running.run_backfill(engine, info)
    assert report.ok, report
    with engine.connect() as conn:
        journaled = {
            r.production_run_id: (r.snapshot_id, bool(r.created_snapshot))
            for r in conn.execute(
                sa.select(
                    journal.c.production_run_id, journal.c.snapshot_id, journal.c.created_snapshot
                ).order_by(journal.c.id)  # the order the links were made, which rollback undoes
            )
        }
    assert sorted(journaled) == sorted(info.work)
    assert len(journaled) == 53 and len(info.to_migrate) == 51
    return RunDone(engine, info, before, updated_at_before, journaled)


def _rollback(
    run_done: RunDone, batch_size: int, on_progress: Optional[Any] = None
) -> backfill.RollbackReport:
    """Roll back at ``batch_size``; a rollback that takes more batches than entries loops."""

    def guarded(progress: backfill.Progress) -> None:
        if progress.batches > run_done.entries + 1:
            raise running.RunawayRun(f"rollback is on batch {progress.batches}: a loop")
        if on_progress is not None:
            on_progress(progress)

    return backfill.rollback(
        run_done.engine,
        batch_size=batch_size,
        lock_timeout=running.LOCK_TIMEOUT_S,
        on_progress=guarded,
    )


def _journal_exists(engine: Engine) -> bool:
    with engine.connect() as conn:
        return sa.inspect(conn).has_table(JOURNAL_TABLE_NAME)


def _journal_rows(engine: Engine) -> dict[int, int]:
    with engine.connect() as conn:
        return dict(
            conn.execute(sa.select(journal.c.production_run_id, journal.c.snapshot_id)).all()
        )


def _links(engine: Engine) -> dict[int, Optional[int]]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(runs.c.id, runs.c.recipe_snapshot_id)).all())


def _snapshot_ids(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(snaps.c.id)).scalars())


def _assert_restored(run_done: RunDone, context: str) -> None:
    fingerprint.assert_same(
        run_done.before,
        fingerprint.take(run_done.engine),
        f"{context}: the database is not what it was before the run",
    )
    assert not _journal_exists(run_done.engine), context


# --- batching and progress -------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 7, 10, 53, 54, backfill.MAX_BATCH_SIZE])
def test_each_batch_is_one_committed_transaction_of_batch_size_entries(
    run_done: RunDone, transactions: Transactions, batch_size: int
) -> None:
    transactions.committed.clear()
    progress: list[backfill.Progress] = []

    started = time.monotonic()
    report = _rollback(run_done, batch_size, progress.append)
    elapsed = time.monotonic() - started

    n = run_done.entries
    batches = -(-n // batch_size)
    assert len(transactions.journal_batches) == batches == report.batches
    # One journal DELETE per batch, and progress after each commit: batch_size entries each,
    # the last one the rest, out of the total counted before the first.
    assert all(sum(_deletes_journal(s) for s in t) == 1 for t in transactions.journal_batches)
    assert [(p.done, p.total, p.batches) for p in progress] == [
        (min(k * batch_size, n), n, k) for k in range(1, batches + 1)
    ]
    # The time since the first batch began, for the rate and the ETA: growing, within the call.
    times = [p.elapsed_s for p in progress]
    assert times == sorted(times) and times[0] > 0 and times[-1] <= elapsed, times
    # Every created snapshot is deleted, none of the two the run only linked; a batch that
    # created none sends no DELETE to recipe_snapshots at all.
    assert (report.snapshots_deleted, report.runs_unlinked) == (51, 53)
    created_batches = {
        i
        for i, entries in enumerate(_batches_of(run_done, batch_size))
        if any(run_done.journaled[r][1] for r in entries)
    }
    assert {
        i
        for i, t in enumerate(transactions.journal_batches)
        if any(_deletes(s, "recipe_snapshots") for s in t)
    } == created_batches
    _assert_restored(run_done, f"rollback in batches of {batch_size}")


def test_the_default_batch_size_is_used_without_one(run_done: RunDone) -> None:
    slept: list[float] = []
    started = time.monotonic()
    report = backfill.rollback(run_done.engine, sleep=slept.append)
    assert 0 < report.duration_s <= time.monotonic() - started
    assert report.batches == 1
    assert slept == []  # and no pause unless one is asked for
    assert run_done.entries <= backfill.DEFAULT_BATCH_SIZE
    _assert_restored(run_done, "rollback at the default batch size")


@pytest.mark.parametrize("batch_size", [0, -1, backfill.MAX_BATCH_SIZE + 1])
def test_a_batch_size_out_of_range_is_refused_before_anything_is_undone(
    run_done: RunDone, batch_size: int
) -> None:
    journaled = _journal_rows(run_done.engine)
    with pytest.raises(BadInputError, match=f"not {batch_size}$"):
        _rollback(run_done, batch_size)
    assert _journal_rows(run_done.engine) == journaled


def _batches_of(run_done: RunDone, batch_size: int) -> list[list[int]]:
    """The run ids of each batch: the journal is undone in id order, the order of the links.

    That is run order on SQLite, MariaDB and PostgreSQL 15 here, but not always on PostgreSQL
    16, whose INSERT ... SELECT may journal a batch's runs in another order.
    """
    ordered = list(run_done.journaled)  # in journal id order
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def stop_after_first(progress: backfill.Progress) -> None:
    raise Interrupted(progress)


def _check_partly_rolled_back(run_done: RunDone, undone: list[int]) -> None:
    """The runs in ``undone`` are as before the run; every other journaled run still linked."""
    engine = run_done.engine
    links = _links(engine)
    snapshots = _snapshot_ids(engine)
    remaining = _journal_rows(engine)
    assert sorted(remaining) == sorted(set(run_done.journaled) - set(undone))
    for run_id, (snapshot_id, created) in run_done.journaled.items():
        if run_id in undone:
            assert links[run_id] is None, run_id
            assert (snapshot_id in snapshots) == (not created), run_id
        else:
            assert links[run_id] == snapshot_id == remaining[run_id], run_id
            assert snapshot_id in snapshots, run_id
    plan = backfill.plan(engine)
    created_undone = sum(run_done.journaled[r][1] for r in undone)
    assert (plan.to_migrate, plan.to_link_existing) == (
        created_undone,
        len(undone) - created_undone,
    )
    assert plan.already_linked == len(run_done.info.already_linked) + len(remaining)


def test_an_interruption_between_two_batches_keeps_the_first_and_a_second_rollback_finishes(
    run_done: RunDone,
) -> None:
    # Rewrite the first entries: PostgreSQL stores the new row versions at the end of the
    # table, so only an ORDER BY makes them the first batch again.
    with run_done.engine.begin() as conn:
        conn.execute(
            sa.update(journal).where(journal.c.id <= 7).values(run_token=journal.c.run_token)
        )

    with pytest.raises(Interrupted):
        _rollback(run_done, 7, stop_after_first)
    # The journal is undone in id order, which is run order here (one run, in batches).
    first_batch = sorted(run_done.journaled)[:7]
    _check_partly_rolled_back(run_done, first_batch)

    again = _rollback(run_done, 7)

    assert again.journal_entries == again.runs_unlinked == run_done.entries - 7
    assert again.batches == -(-(run_done.entries - 7) // 7)
    created_first = sum(run_done.journaled[r][1] for r in first_batch)
    assert again.snapshots_deleted == 51 - created_first
    _assert_restored(run_done, "a rollback interrupted after its first batch, then resumed")


def test_the_journal_is_undone_in_the_order_the_links_were_made_not_in_run_order(
    run_done: RunDone,
) -> None:
    # The seven lowest runs linked last, as when a second run links the runs of a recipe the
    # first one could not snapshot: a scan of the journal by its run index (which SQLite picks
    # for a bare "SELECT id ... LIMIT") would undo them first.
    lowest = sorted(run_done.journaled)[:7]
    with run_done.engine.begin() as conn:
        conn.execute(
            sa.update(journal)
            .where(journal.c.production_run_id.in_(lowest))
            .values(id=journal.c.id + 1000)
        )

    with pytest.raises(Interrupted):
        _rollback(run_done, 7, stop_after_first)

    _check_partly_rolled_back(run_done, list(run_done.journaled)[7:14])


def test_ctrl_c_between_two_batches_says_how_far_the_rollback_got(run_done: RunDone) -> None:
    def ctrl_c_after_second(progress: backfill.Progress) -> None:
        if progress.batches == 2:
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(InterruptedRunError) as stopped:
        _rollback(run_done, 7, ctrl_c_after_second)
    elapsed = time.monotonic() - started

    assert str(stopped.value) == (
        "interrupted: the batches committed so far are undone and the rest is still "
        "journaled; run rollback again to finish"
    )
    report = stopped.value.report
    assert isinstance(report, backfill.RollbackReport)
    assert report.interrupted is True
    assert (report.batches, report.journal_entries, report.runs_unlinked) == (2, 14, 14)
    assert 0 < report.duration_s <= elapsed
    _check_partly_rolled_back(run_done, list(run_done.journaled)[:14])


def test_a_batch_that_fails_half_way_is_undone_as_a_whole(run_done: RunDone) -> None:
    # The second batch fails at its last statement (the journal DELETE), after it unlinked its
    # runs and deleted their snapshots: none of that may stay.
    deletes = []

    def fail_second_journal_delete(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if _deletes_journal(statement):
            deletes.append(statement)
            if len(deletes) == 2:
                raise Interrupted(statement)

    event.listen(run_done.engine, "before_cursor_execute", fail_second_journal_delete)
    try:
        with pytest.raises(Interrupted):
            _rollback(run_done, 10)
    finally:
        event.remove(run_done.engine, "before_cursor_execute", fail_second_journal_delete)
    _check_partly_rolled_back(run_done, list(run_done.journaled)[:10])

    _rollback(run_done, 10)
    _assert_restored(run_done, "a rollback whose second batch failed, then resumed")


# --- the report ------------------------------------------------------------------------------


def test_the_report_counts_what_was_undone(run_done: RunDone) -> None:
    report = _rollback(run_done, 20)
    assert (
        report.journal_entries,
        report.runs_unlinked,
        report.snapshots_deleted,
        report.left_alone,
        report.batches,
    ) == (53, 53, 51, 0, 3)
    assert isinstance(report.duration_s, float) and report.duration_s >= 0
    assert report.to_dict() == {
        "journal_entries": 53,
        "runs_unlinked": 53,
        "snapshots_deleted": 51,
        "left_alone": 0,
        "batches": 3,
        "duration_s": round(report.duration_s, 3),
        "interrupted": False,
    }
    # The runs nobody touched since get their updated_at back, byte for byte.
    assert _updated_at(run_done.engine) == run_done.updated_at_before
    # The two snapshots the run only linked are the application's: unlinked, never deleted.
    assert set(run_done.info.to_link_existing.values()) <= _snapshot_ids(run_done.engine)


# --- each case of undo -----------------------------------------------------------------------


def _edit_run(run_done: RunDone, run_id: int) -> None:
    """The application edits a run after the backfill linked it (a new updated_at)."""
    with run_done.engine.begin() as conn:
        conn.execute(
            sa.update(runs)
            .where(runs.c.id == run_id)
            .values(notes="edited after the backfill", updated_at=EDITED_AT)
        )


def test_a_run_the_application_changed_since_is_unlinked_and_its_snapshot_deleted(
    run_done: RunDone,
) -> None:
    run_id = sorted(run_done.info.to_migrate)[3]
    snapshot_id = run_done.snapshot_of(run_id)
    _edit_run(run_done, run_id)

    report = _rollback(run_done, 7)

    assert (report.journal_entries, report.runs_unlinked, report.snapshots_deleted) == (53, 53, 51)
    assert report.left_alone == 0
    assert _links(run_done.engine)[run_id] is None
    assert snapshot_id not in _snapshot_ids(run_done.engine)
    with run_done.engine.connect() as conn:
        notes = conn.execute(sa.select(runs.c.notes).where(runs.c.id == run_id)).scalar_one()
    assert notes == "edited after the backfill"
    others = _updated_at(run_done.engine)
    del others[run_id]
    assert others == {k: v for k, v in run_done.updated_at_before.items() if k != run_id}
    assert not _journal_exists(run_done.engine)


def test_a_run_the_application_changed_since_keeps_the_updated_at_it_wrote(
    run_done: RunDone,
) -> None:
    run_id = sorted(run_done.info.to_migrate)[3]
    _edit_run(run_done, run_id)
    _rollback(run_done, 7)
    assert _updated_at(run_done.engine)[run_id] == EDITED_AT


def test_a_run_the_application_linked_to_another_snapshot_is_left_alone(
    run_done: RunDone,
) -> None:
    # The application re-snapshots the run: deletes the backfilled snapshot, writes its own
    # and links the run to it. Rollback must touch neither the run nor the new snapshot.
    run_id = sorted(run_done.info.to_migrate)[5]
    backfilled = run_done.snapshot_of(run_id)
    engine = run_done.engine
    with engine.begin() as conn:
        row = dict(conn.execute(sa.select(snaps).where(snaps.c.id == backfilled)).one()._mapping)
        conn.execute(sa.update(runs).where(runs.c.id == run_id).values(recipe_snapshot_id=None))
        conn.execute(sa.delete(snaps).where(snaps.c.id == backfilled))
        new_id = conn.execute(sa.select(sa.func.max(snaps.c.id))).scalar_one() + 100
        conn.execute(
            sa.insert(snaps).values(
                {
                    **row,
                    "id": new_id,
                    "uuid": "00000000-0000-4000-8000-000000000001",
                    "is_backfilled": False,
                    "scale_factor": 2.0,
                }
            )
        )
        conn.execute(
            sa.update(runs)
            .where(runs.c.id == run_id)
            .values(recipe_snapshot_id=new_id, updated_at=EDITED_AT)
        )
    report = _rollback(run_done, 7)

    assert (report.journal_entries, report.runs_unlinked, report.left_alone) == (53, 52, 1)
    # Its journaled snapshot is gone already: 50 of the 51 the run created are deleted.
    assert report.snapshots_deleted == 50
    assert _links(engine)[run_id] == new_id
    assert new_id in _snapshot_ids(engine)
    assert _updated_at(engine)[run_id] == EDITED_AT
    assert not _journal_exists(engine)


def test_a_created_snapshot_another_run_links_now_is_kept(run_done: RunDone) -> None:
    # The application pointed an already linked run at a snapshot the backfill created:
    # deleting it would break that link (and the foreign key), so it stays.
    run_id = sorted(run_done.info.to_migrate)[6]
    created = run_done.snapshot_of(run_id)
    other_run = sorted(run_done.info.already_linked)[0]
    with run_done.engine.begin() as conn:
        conn.execute(
            sa.update(runs).where(runs.c.id == other_run).values(recipe_snapshot_id=created)
        )

    report = _rollback(run_done, 7)

    assert (report.journal_entries, report.runs_unlinked, report.left_alone) == (53, 53, 0)
    assert report.snapshots_deleted == 50
    links = _links(run_done.engine)
    assert links[run_id] is None and links[other_run] == created
    assert created in _snapshot_ids(run_done.engine)


def test_a_rollback_pauses_between_batches(run_done: RunDone) -> None:
    slept: list[float] = []
    report = backfill.rollback(run_done.engine, batch_size=20, pause_s=0.25, sleep=slept.append)
    # 53 entries in batches of 20: three batches, each followed by the application's turn.
    assert report.batches == 3
    assert slept == [0.25] * 3
    _assert_restored(run_done, "a paced rollback")


def test_an_empty_journal_is_dropped_and_nothing_else_changes(
    backend: Backend, build_state: Any, engine: Engine
) -> None:
    build_state("already_migrated")
    with engine.begin() as conn:
        create_journal(conn)
    assert backfill.rollback_pending(engine) == 0
    before = fingerprint.take(engine)
    progress: list[backfill.Progress] = []

    report = backfill.rollback(engine, batch_size=7, on_progress=progress.append)

    assert report.to_dict() == {
        "journal_entries": 0,
        "runs_unlinked": 0,
        "snapshots_deleted": 0,
        "left_alone": 0,
        "batches": 0,
        "duration_s": round(report.duration_s, 3),
        "interrupted": False,
    }
    assert progress == []
    assert not _journal_exists(engine)
    after = fingerprint.take(engine)
    assert set(before.tables) - set(after.tables) == {JOURNAL_TABLE_NAME}
    assert {t: before.tables[t] for t in after.tables} == after.tables


def test_without_a_journal_rollback_changes_nothing(
    backend: Backend, build_state: Any, engine: Engine, transactions: Transactions
) -> None:
    build_state("already_migrated")
    assert backfill.rollback_pending(engine) == 0
    before = fingerprint.take(engine)
    transactions.committed.clear()

    started = time.monotonic()
    report = backfill.rollback(engine, batch_size=7)
    elapsed = time.monotonic() - started

    assert (report.journal_entries, report.batches, report.runs_unlinked) == (0, 0, 0)
    assert 0 <= report.duration_s <= elapsed
    fingerprint.assert_same(before, fingerprint.take(engine), "rollback without a journal wrote")
    assert not _journal_exists(engine)
    assert transactions.journal_batches == []


def test_a_second_rollback_finds_nothing(run_done: RunDone) -> None:
    assert backfill.rollback_pending(run_done.engine) == 53
    _rollback(run_done, 7)
    assert backfill.rollback_pending(run_done.engine) == 0
    again = _rollback(run_done, 7)
    assert again.to_dict() == {
        "journal_entries": 0,
        "runs_unlinked": 0,
        "snapshots_deleted": 0,
        "left_alone": 0,
        "batches": 0,
        "duration_s": round(again.duration_s, 3),
        "interrupted": False,
    }
    _assert_restored(run_done, "two rollbacks")


def test_a_batch_deletes_only_the_snapshots_of_its_own_entries(run_done: RunDone) -> None:
    # The application unlinked a run of the last batch: its created snapshot is linked to
    # nothing, yet it is that batch's to delete, not the first's.
    run_id = sorted(run_done.info.to_migrate)[-1]
    snapshot_id = run_done.snapshot_of(run_id)
    with run_done.engine.begin() as conn:
        conn.execute(sa.update(runs).where(runs.c.id == run_id).values(recipe_snapshot_id=None))

    with pytest.raises(Interrupted):
        _rollback(run_done, 7, stop_after_first)
    assert snapshot_id in _snapshot_ids(run_done.engine)
    report = _rollback(run_done, 7)
    assert snapshot_id not in _snapshot_ids(run_done.engine)
    assert report.left_alone == 1


# --- the planner's statistics ----------------------------------------------------------------


@pytest.mark.parametrize("journaled", ["every link", "links to existing snapshots only", "none"])
def test_a_rollback_that_changed_rows_refreshes_the_planner_statistics(
    run_done: RunDone, monkeypatch: pytest.MonkeyPatch, journaled: str
) -> None:
    """Also one that only unlinked runs, deleting no snapshot: the next plan's joins are planned
    with those figures. A rollback that changed nothing leaves them alone."""
    if journaled == "links to existing snapshots only":
        with run_done.engine.begin() as conn:
            conn.execute(sa.delete(journal).where(journal.c.created_snapshot == sa.true()))
    elif journaled == "none":
        _rollback(run_done, 7)
    refreshed: list[tuple[Any, ...]] = []
    monkeypatch.setattr(backfill, "refresh_statistics", lambda *args: refreshed.append(args))

    report = _rollback(run_done, 7)

    expected = {"every link": (51, 53), "links to existing snapshots only": (0, 2), "none": (0, 0)}
    assert (report.snapshots_deleted, report.runs_unlinked) == expected[journaled], report
    want = [] if journaled == "none" else [(run_done.engine, *backfill.PLAN_STATISTICS)]
    assert refreshed == want
