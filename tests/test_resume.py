"""A run interrupted after k committed batches, then rerun, ends where an uninterrupted run ends.

The interruption is injected through ``on_progress``, which ``run`` calls after each committed
batch: raising from it is a crash right after batch k (or Ctrl-C, with KeyboardInterrupt).
"Where it ends" is compared with normalized fingerprints (``fingerprint.take(normalized=True)``):
uuids and timestamps differ between two runs, and on PostgreSQL a batch rolled back by the crash
still consumed sequence values, so snapshots are compared by the run they belong to, not by id.

The uninterrupted reference is made once per backend and state (``uninterrupted``); each test
interrupts a copy of the same state in a database of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from snapshot_backfill import backfill
from snapshot_backfill.errors import InterruptedRunError
from snapshot_backfill.testing import fingerprint
from snapshot_backfill.testing.backends import Backend
from snapshot_backfill.testing.expectations import StateInfo, describe, observe
from snapshot_backfill.testing.fingerprint import Fingerprint, assert_same, explain
from snapshot_backfill.testing.invariants import check_verify
from snapshot_backfill.testing.running import rollback_backfill, run_backfill

# (state, k): partially_migrated has 4 batches of 7, each ending on a different kind of run (an
# orphan, a dangling snapshot, an orphan): stop after each of the first three; the sample data
# has 9: stop in the middle.
CRASH_POINTS = [
    pytest.param("partially_migrated", 1, id="partially_migrated-1"),
    pytest.param("partially_migrated", 2, id="partially_migrated-2"),
    pytest.param("partially_migrated", 3, id="partially_migrated-3"),
    pytest.param("from_sample_data", 5, id="from_sample_data-5"),
]


class InjectedCrash(Exception):
    """What the test raises after batch k: the process dying right after a commit."""


def stop_after(k: int, exception: BaseException) -> Any:
    """An on_progress callback that raises ``exception`` once batch ``k`` has committed."""

    def on_progress(progress: backfill.Progress) -> None:
        if progress.batches == k:
            raise exception

    return on_progress


@dataclass
class Reference:
    """A state's database before and after one uninterrupted run (normalized fingerprints)."""

    name: str
    state: StateInfo
    before: Fingerprint
    after: Fingerprint


@pytest.fixture(scope="module")
def uninterrupted(
    request: pytest.FixtureRequest,
    backend_kind: str,
    state_templates: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Reference]:
    """The reference: the state (the indirect parameter) run once, uninterrupted, per backend."""
    directory = tmp_path_factory.mktemp("uninterrupted")
    with state_templates.provisioned(backend_kind, request.param, directory) as (backend, state):
        engine = backend.make_engine()
        before = fingerprint.take(engine, normalized=True)
        report = run_backfill(engine, state)
        assert report.ok, report.to_dict()
        yield Reference(request.param, state, before, fingerprint.take(engine, normalized=True))


def _copy(reference: Reference, backend: Backend, state_templates: Any) -> Engine:
    state = state_templates.restore(backend, reference.name)
    assert state == reference.state
    engine = backend.make_engine()
    assert_same(
        reference.before,
        fingerprint.take(engine, normalized=True),
        "the copy of the state differs from the reference's",
        describe(state, backend.name),
    )
    return engine


def _linked_after(state: StateInfo, k: int) -> list[int]:
    """The runs linked once k batches committed: the work among the first k * size unlinked."""
    walked = set(state.unlinked[: k * state.batch_size])
    return sorted(r for r in state.work if r in walked)


def _check_progress(engine: Engine, state: StateInfo, k: int, where: dict[str, Any]) -> None:
    expected = _linked_after(state, k)
    now = observe(engine)
    linked_now = sorted(set(now.already_linked) - set(state.already_linked))
    assert linked_now == expected, explain(
        f"after {k} committed batches the wrong runs are linked",
        where,
        batch_size=state.batch_size,
        batches_walked=f"unlinked runs {state.unlinked[: k * state.batch_size]}",
        expected_linked=expected,
        linked=linked_now,
    )


@pytest.mark.parametrize(("uninterrupted", "k"), CRASH_POINTS, indirect=["uninterrupted"])
def test_crash_after_k_batches_then_rerun_ends_like_an_uninterrupted_run(
    uninterrupted: Reference, backend: Backend, state_templates: Any, k: int
) -> None:
    state = uninterrupted.state
    where = {**describe(state, backend.describe()), "interrupted after batch": k}
    assert state.batches > k, f"state {state.name} has only {state.batches} batches"
    engine = _copy(uninterrupted, backend, state_templates)

    with pytest.raises(InjectedCrash):
        run_backfill(
            engine, state, on_progress=stop_after(k, InjectedCrash(f"crash after batch {k}"))
        )

    _check_progress(engine, state, k, where)
    remaining = backfill.plan(engine)
    assert remaining.work == len(state.work) - len(_linked_after(state, k)), explain(
        "the plan after the crash does not count the remaining work",
        where,
        plan=remaining.to_dict(),
    )
    resumed = run_backfill(engine, state)
    assert resumed.ok and resumed.migrated + resumed.linked_existing == remaining.work, explain(
        "the second run did not finish the job", where, report=resumed.to_dict()
    )
    assert_same(
        uninterrupted.after,
        fingerprint.take(engine, normalized=True),
        "interrupted + resumed differs from an uninterrupted run",
        where,
    )
    check_verify(backfill.verify(engine), state, where, after_run=True)


@pytest.mark.parametrize("uninterrupted", ["partially_migrated"], indirect=True)
def test_ctrl_c_keeps_the_committed_batches_and_a_rerun_finishes(
    uninterrupted: Reference, backend: Backend, state_templates: Any
) -> None:
    state, k = uninterrupted.state, 2
    where = {**describe(state, backend.describe()), "Ctrl-C after batch": k}
    engine = _copy(uninterrupted, backend, state_templates)

    with pytest.raises(InterruptedRunError) as interrupted:
        run_backfill(engine, state, on_progress=stop_after(k, KeyboardInterrupt()))

    report = interrupted.value.report
    done = _linked_after(state, k)
    assert (report.interrupted, report.batches, report.migrated + report.linked_existing) == (
        True,
        k,
        len(done),
    ), explain("the interrupted run's report is wrong", where, report=report.to_dict())
    _check_progress(engine, state, k, where)
    run_backfill(engine, state)
    assert_same(
        uninterrupted.after,
        fingerprint.take(engine, normalized=True),
        "interrupted (Ctrl-C) + resumed differs from an uninterrupted run",
        where,
    )


@pytest.mark.parametrize("uninterrupted", ["partially_migrated"], indirect=True)
@pytest.mark.parametrize("then", ["resumed", "not resumed"])
def test_rollback_after_an_interrupted_run_restores_the_database(
    uninterrupted: Reference, backend: Backend, state_templates: Any, then: str
) -> None:
    """The journal spans both runs (two run tokens); rollback undoes all of it."""
    state, k = uninterrupted.state, 2
    where = {**describe(state, backend.describe()), "crash after batch": k, "then": then}
    engine = _copy(uninterrupted, backend, state_templates)
    before = fingerprint.take(engine)
    with pytest.raises(InjectedCrash):
        run_backfill(engine, state, on_progress=stop_after(k, InjectedCrash()))
    if then == "resumed":
        run_backfill(engine, state)

    report = rollback_backfill(engine, state)

    expected_entries = len(state.work) if then == "resumed" else len(_linked_after(state, k))
    assert report.journal_entries == report.runs_unlinked == expected_entries, explain(
        "rollback did not undo every journaled link",
        where,
        report=report.to_dict(),
        expected_entries=expected_entries,
    )
    assert_same(
        before,
        fingerprint.take(engine),
        "rollback after an interrupted run did not restore the database",
        where,
    )
