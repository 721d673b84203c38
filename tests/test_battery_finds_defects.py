"""Each check of the rehearsal's battery fails on the defect it exists to find.

The battery (``snapshot_backfill.testing.battery``) is what ``rehearse`` and the plugin's
``--snapshot-backfill-url`` run on a copy of a user's database. Its checks pass on every
correct copy the suite builds; here each gets a copy where it must not pass, and must say so,
naming the runs involved. SQLite is enough: the checks read and write through SQLAlchemy
Core, and ``test_rehearse.py`` runs the whole battery on every backend.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from snapshot_backfill import backfill
from snapshot_backfill.models import recipes
from snapshot_backfill.testing import battery
from snapshot_backfill.testing.backends import Backend
from snapshot_backfill.testing.expectations import StateInfo

from planted import execute_without_foreign_keys, link, set_snapshot, snapshot_of, unlink


@pytest.fixture
def sample(sqlite_backend: Backend, state_templates: object) -> Iterator[tuple[Engine, StateInfo]]:
    info = state_templates.restore(sqlite_backend, "from_sample_data")  # type: ignore[attr-defined]
    engine = sqlite_backend.make_engine()
    yield engine, info
    engine.dispose()


def test_plan_is_pure_names_a_table_that_changed(sample: tuple[Engine, StateInfo]) -> None:
    engine, info = sample
    before = battery.digests(engine)
    execute_without_foreign_keys(
        engine, sa.update(recipes).where(recipes.c.id == min(info.recipe_ids)).values(notes="x")
    )
    finding = battery.check_plan_is_pure(engine, before)
    assert (finding.check, finding.ok) == ("plan_is_pure", False)
    assert finding.detail == "plan changed tables: recipes"


def test_verify_fails_before_fails_when_verify_passes_with_work_to_do(
    sample: tuple[Engine, StateInfo],
) -> None:
    engine, _ = sample
    plan = backfill.plan(engine)
    backfill.run(engine)  # verify now passes, but the plan given says there is work
    finding = battery.check_verify_fails_before(engine, plan)
    assert not finding.ok
    assert f"verify passed although {plan.work} runs are to be linked" in finding.detail
    assert finding.run_ids == ()  # nothing is left unlinked to name


def test_run_matches_plan_names_the_runs_a_blocked_run_left(
    sample: tuple[Engine, StateInfo],
) -> None:
    engine, info = sample
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER no_links BEFORE UPDATE OF recipe_snapshot_id ON production_runs "
            "BEGIN SELECT RAISE(ABORT, 'links are refused'); END"
        )
    finding = battery.check_run_matches_plan(engine)
    assert not finding.ok
    assert "run stopped" in finding.detail and "links are refused" in finding.detail
    # The batch's id range, lowest first (it takes runs to link and to migrate in two lists).
    assert f"(runs {min(info.work)}.." in finding.detail
    assert f"{len(info.work)} runs (first 50 listed) left unlinked" in finding.detail
    assert finding.run_ids[0] == min(info.work)


def test_verify_passes_after_names_the_kind_and_the_run(sample: tuple[Engine, StateInfo]) -> None:
    engine, info = sample
    backfill.run(engine)
    run_id = min(info.to_migrate)
    execute_without_foreign_keys(
        engine, set_snapshot(snapshot_of(engine, run_id), scale_factor=3.0)
    )
    finding = battery.check_verify_passes_after(engine)
    assert not finding.ok
    assert "verify found 1 problems (backfill_scale_factor)" in finding.detail
    assert finding.run_ids == (run_id,)


def test_second_run_writes_nothing_fails_when_the_second_run_links(
    sample: tuple[Engine, StateInfo],
) -> None:
    engine, info = sample
    backfill.run(engine)
    run_id = min(info.to_link_existing)
    execute_without_foreign_keys(engine, unlink(run_id))
    finding = battery.check_second_run_writes_nothing(engine)
    assert not finding.ok
    assert "the second run migrated 0, linked 1, changed tables: " in finding.detail
    assert "production_runs" in finding.detail


def test_rollback_restores_start_names_the_runs_it_left_linked(
    sample: tuple[Engine, StateInfo],
) -> None:
    engine, info = sample
    start = battery.digests(engine)
    backfill.run(engine)
    # A link the journal does not hold: rollback leaves it, so the runs differ from the start.
    orphan = min(info.orphaned)
    snapshot_id = min(info.snapshot_ids)
    execute_without_foreign_keys(engine, link(orphan, snapshot_id))
    finding = battery.check_rollback_restores_start(engine, start)
    assert not finding.ok
    assert finding.detail == "after rollback these tables differ from the start: production_runs"
    assert orphan in finding.run_ids


def test_interrupted_run_resumes_refuses_a_copy_that_is_already_journaled(
    sample: tuple[Engine, StateInfo],
) -> None:
    engine, info = sample
    plan = backfill.plan(engine)
    backfill.run(engine)
    finding = battery.check_interrupted_run_resumes(engine, plan=plan)
    assert not finding.ok
    assert f"already journals {len(info.work)} links" in finding.detail
    assert finding.run_ids[0] == min(info.work)


def test_interrupted_run_resumes_has_nothing_to_interrupt_without_work(
    sample: tuple[Engine, StateInfo],
) -> None:
    engine, _ = sample
    backfill.run(engine)
    backfill.rollback(engine)
    backfill.run(engine)
    finding = battery.check_interrupted_run_resumes(engine)
    assert finding.ok and finding.detail == "nothing to do: no run to interrupt"
