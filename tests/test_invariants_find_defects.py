"""The invariant checks catch what they exist to catch.

The suite calls ``snapshot_backfill.testing.invariants`` on correct backfills, where a check
that never fails would pass as well. Here each check gets a planted defect (a report with one
count off, a snapshot with one column wrong, a run linked where it must not be) and must fail,
naming what is wrong. SQLite is enough: the checks read through SQLAlchemy Core only, and the
invariant tests run them on every backend with correct data.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from snapshot_backfill import backfill
from snapshot_backfill.journal import JOURNAL_TABLE_NAME
from snapshot_backfill.models import production_runs, recipe_snapshots, recipes
from snapshot_backfill.testing import fingerprint
from snapshot_backfill.testing.backends import Backend
from snapshot_backfill.testing.expectations import StateInfo, describe
from snapshot_backfill.testing.fingerprint import Fingerprint
from snapshot_backfill.testing.invariants import (
    check_backfilled_content,
    check_links_after_run,
    check_plan,
    check_rollback_report,
    check_run_report,
    check_verify,
    check_writes,
)
from snapshot_backfill.testing.running import run_backfill

from planted import execute_without_foreign_keys, link, set_snapshot, snapshot_of, unlink


@dataclass
class Migrated:
    """The sample data's database, fingerprinted, run once, fingerprinted again."""

    engine: Engine
    info: StateInfo
    where: dict[str, Any]
    plan: backfill.Plan
    before: Fingerprint
    report: backfill.RunReport

    def execute(self, statement: Any) -> None:
        execute_without_foreign_keys(self.engine, statement)

    def after(self) -> Fingerprint:
        return fingerprint.take(self.engine)

    def migrated_snapshot(self) -> tuple[int, int]:
        """(run id, snapshot id) of the first run the backfill gave a new snapshot."""
        run_id = min(self.info.to_migrate)
        return run_id, snapshot_of(self.engine, run_id)


@pytest.fixture
def migrated(sqlite_backend: Backend, state_templates: Any) -> Iterator[Migrated]:
    info = state_templates.restore(sqlite_backend, "from_sample_data")
    engine = sqlite_backend.make_engine()
    the_plan = backfill.plan(engine)
    before = fingerprint.take(engine)
    report = run_backfill(engine, info)
    yield Migrated(engine, info, describe(info, "sqlite"), the_plan, before, report)


def fails(check: Callable[[], None], *facts: str) -> str:
    """Run ``check``; it must raise an AssertionError whose message holds every fact."""
    with pytest.raises(AssertionError) as raised:
        check()
    message = str(raised.value)
    for fact in facts:
        assert fact in message, message
    return message


def test_the_checks_pass_on_the_correct_backfill(migrated: Migrated) -> None:
    """The baseline each planted defect departs from."""
    check_plan(migrated.plan, migrated.info, migrated.where)
    check_run_report(migrated.report, migrated.info, migrated.where)
    check_writes(migrated.before, migrated.after(), migrated.info, migrated.where)
    check_backfilled_content(migrated.engine, migrated.info, migrated.where)
    check_links_after_run(migrated.engine, migrated.info, migrated.where)
    check_verify(backfill.verify(migrated.engine), migrated.info, migrated.where, after_run=True)


# --- reports with one figure off ---------------------------------------------------------


@pytest.mark.parametrize(
    "field, fact",
    [
        ("to_migrate", "to_migrate"),
        ("to_link_existing", "to_link_existing"),
        ("already_linked", "already_linked"),
        ("total_runs", "total_runs"),
    ],
)
def test_check_plan_finds_a_count_off_by_one(migrated: Migrated, field: str, fact: str) -> None:
    wrong = dataclasses.replace(migrated.plan, **{field: getattr(migrated.plan, field) + 1})
    fails(
        lambda: check_plan(wrong, migrated.info, migrated.where),
        "the plan does not count what the state holds",
        fact,
        "sqlite",
    )


def test_check_plan_finds_a_missing_orphan(migrated: Migrated) -> None:
    wrong = dataclasses.replace(migrated.plan, orphaned_run_ids=migrated.plan.orphaned_run_ids[1:])
    fails(lambda: check_plan(wrong, migrated.info, migrated.where), "orphaned_run_ids")


def test_check_plan_finds_a_wrong_per_recipe_line(migrated: Migrated) -> None:
    first, *rest = migrated.plan.per_recipe
    line = dataclasses.replace(first, to_migrate=first.to_migrate + 1)
    wrong = dataclasses.replace(migrated.plan, per_recipe=[line, *rest])
    fails(
        lambda: check_plan(wrong, migrated.info, migrated.where),
        "the plan's per-recipe breakdown is wrong",
        f"recipe {first.recipe_id}",
    )


@pytest.mark.parametrize(
    "change",
    [
        {"migrated": -1},
        {"linked_existing": 1},
        {"skipped_orphans": 1},
        {"interrupted": True},
    ],
)
def test_check_run_report_finds_a_wrong_count(migrated: Migrated, change: dict[str, Any]) -> None:
    report = migrated.report
    values = {
        k: (not getattr(report, k)) if isinstance(v, bool) else getattr(report, k) + v
        for k, v in change.items()
    }
    wrong = dataclasses.replace(report, **values)
    fails(
        lambda: check_run_report(wrong, migrated.info, migrated.where),
        "the run's report does not match the state",
    )


def test_check_run_report_finds_a_wrong_number_of_batches(migrated: Migrated) -> None:
    wrong = dataclasses.replace(migrated.report, batches=migrated.report.batches + 1)
    fails(
        lambda: check_run_report(wrong, migrated.info, migrated.where),
        "the run did not take the expected number of batches",
        f"batch_size: {migrated.info.batch_size}",
    )


def test_check_rollback_report_finds_a_run_left_alone(migrated: Migrated) -> None:
    report = backfill.rollback(migrated.engine)
    check_rollback_report(report, migrated.info, migrated.where)
    wrong = dataclasses.replace(report, left_alone=1, runs_unlinked=report.runs_unlinked - 1)
    fails(
        lambda: check_rollback_report(wrong, migrated.info, migrated.where),
        "the rollback report does not match the run it undid",
    )


# --- writes the run must not make ----------------------------------------------------------


def test_check_writes_finds_a_table_the_run_must_not_touch(migrated: Migrated) -> None:
    recipe_id = min(migrated.info.recipe_ids)
    migrated.execute(sa.update(recipes).where(recipes.c.id == recipe_id).values(notes="edited"))
    fails(
        lambda: check_writes(migrated.before, migrated.after(), migrated.info, migrated.where),
        "the run changed table recipes",
        "table recipes: 1 rows changed",
    )


def test_check_writes_finds_a_snapshot_for_a_run_not_to_migrate(migrated: Migrated) -> None:
    run_id, _ = migrated.migrated_snapshot()
    migrated.execute(
        sa.delete(recipe_snapshots).where(recipe_snapshots.c.production_run_id == run_id)
    )
    fails(
        lambda: check_writes(migrated.before, migrated.after(), migrated.info, migrated.where),
        "one snapshot per run to migrate",
        f"runs_to_migrate: {sorted(migrated.info.to_migrate)}",
    )


def test_check_writes_finds_an_orphan_linked(migrated: Migrated) -> None:
    orphan = min(migrated.info.orphaned)
    _, snapshot_id = migrated.migrated_snapshot()
    migrated.execute(link(orphan, snapshot_id))
    fails(
        lambda: check_writes(migrated.before, migrated.after(), migrated.info, migrated.where),
        "the run must link exactly the runs to migrate and to link",
        f"orphans_changed: [{orphan}]",
    )


def test_check_writes_finds_a_run_changed_beyond_its_link(migrated: Migrated) -> None:
    run_id, _ = migrated.migrated_snapshot()
    migrated.execute(
        sa.update(production_runs).where(production_runs.c.id == run_id).values(notes="edited")
    )
    fails(
        lambda: check_writes(migrated.before, migrated.after(), migrated.info, migrated.where),
        f"the run changed more than the link of run {run_id}",
        "notes",
    )


def test_check_writes_finds_a_journal_entry_missing(migrated: Migrated) -> None:
    with migrated.engine.begin() as conn:
        conn.exec_driver_sql(
            f"DELETE FROM {JOURNAL_TABLE_NAME} "
            f"WHERE id = (SELECT max(id) FROM {JOURNAL_TABLE_NAME})"
        )
    fails(
        lambda: check_writes(migrated.before, migrated.after(), migrated.info, migrated.where),
        "the journal must hold one entry per link the run made",
        f"journal_rows: {len(migrated.info.work) - 1}",
    )


# --- a backfilled snapshot with one thing wrong ---------------------------------------------


@pytest.mark.parametrize(
    "values, fact",
    [
        ({"is_backfilled": False}, "is_backfilled"),
        ({"scale_factor": 2.0}, "scale_factor: 2.0, expected 1.0"),
        ({"snapshot_date": sa.func.datetime("2001-01-01")}, "snapshot_date"),
        ({"recipe_data": "{not json"}, "not JSON"),
        (
            {"recipe_data": sa.func.json_set(recipe_snapshots.c.recipe_data, "$.name", "Other")},
            "name: expected",
        ),
        ({"ingredients_data": "[]"}, "ingredients_data"),
        ({"uuid": "6F9619FF-8B86-4D01-B42D-00C04FC964FF"}, "uuid: '6F9619FF"),
        ({"uuid": "6f9619ff-8b86-1d01-b42d-00c04fc964ff"}, "uuid: '6f9619ff-8b86-1d01"),
        ({"uuid": "6f9619ff-8b86-4d01-c42d-00c04fc964ff"}, "uuid: '6f9619ff-8b86-4d01-c42d"),
        ({"uuid": "{6f9619ff-8b86-4d01-b42d-00c04fc964ff}"}, "uuid: '{6f9619ff"),
        ({"uuid": "snapshot-1"}, "uuid: 'snapshot-1', expected a uuid4"),
    ],
    ids=[
        "flag",
        "scale_factor",
        "date",
        "bad_json",
        "recipe_data",
        "ingredients_data",
        "uuid_upper_case",
        "uuid_version_1",
        "uuid_variant",
        "uuid_braces",
        "uuid_not_one",
    ],
)
def test_check_backfilled_content_finds_a_wrong_column(
    migrated: Migrated, values: dict[str, Any], fact: str
) -> None:
    run_id, snapshot_id = migrated.migrated_snapshot()
    migrated.execute(set_snapshot(snapshot_id, **values))
    fails(
        lambda: check_backfilled_content(migrated.engine, migrated.info, migrated.where),
        f"backfilled snapshot {snapshot_id} of run {run_id} is wrong",
        fact,
    )


def test_check_backfilled_content_finds_a_snapshot_of_another_recipe(migrated: Migrated) -> None:
    _, snapshot_id = migrated.migrated_snapshot()
    migrated.execute(set_snapshot(snapshot_id, recipe_id=-5))
    fails(
        lambda: check_backfilled_content(migrated.engine, migrated.info, migrated.where),
        "recipe_id: -5, expected the run's recipe",
    )


def test_check_backfilled_content_finds_a_run_not_linked_to_its_snapshot(
    migrated: Migrated,
) -> None:
    run_id, snapshot_id = migrated.migrated_snapshot()
    migrated.execute(unlink(run_id))
    fails(
        lambda: check_backfilled_content(migrated.engine, migrated.info, migrated.where),
        f"run {run_id} links None, expected snapshot {snapshot_id}",
    )


# --- links ---------------------------------------------------------------------------------


def test_check_links_finds_a_run_linked_to_a_new_snapshot_instead_of_its_own(
    migrated: Migrated,
) -> None:
    run_id, snapshot_id = sorted(migrated.info.to_link_existing.items())[0]
    _, other = migrated.migrated_snapshot()
    migrated.execute(link(run_id, other))
    fails(
        lambda: check_links_after_run(migrated.engine, migrated.info, migrated.where),
        f"run {run_id}: expected snapshot {snapshot_id}, linked to {other}",
    )


def test_check_links_finds_an_orphan_given_a_snapshot(migrated: Migrated) -> None:
    orphan = min(migrated.info.orphaned)
    _, snapshot_id = migrated.migrated_snapshot()
    migrated.execute(set_snapshot(snapshot_id, production_run_id=orphan))
    fails(
        lambda: check_links_after_run(migrated.engine, migrated.info, migrated.where),
        "orphaned runs must never get a snapshot",
        f"with_a_snapshot_row: [{orphan}]",
    )


def test_check_links_finds_a_snapshot_of_a_recipe_that_does_not_exist(migrated: Migrated) -> None:
    _, snapshot_id = migrated.migrated_snapshot()
    migrated.execute(set_snapshot(snapshot_id, recipe_id=9999))
    fails(
        lambda: check_links_after_run(migrated.engine, migrated.info, migrated.where),
        "snapshots of recipes that do not exist were created",
        "9999",
    )


# --- verify's report -----------------------------------------------------------------------


def test_check_verify_finds_problems_left_after_the_run(migrated: Migrated) -> None:
    run_id, _ = migrated.migrated_snapshot()
    migrated.execute(unlink(run_id))
    report = backfill.verify(migrated.engine)
    fails(
        lambda: check_verify(report, migrated.info, migrated.where, after_run=True),
        "verify after the run is wrong",
        str(run_id),
    )


def test_check_verify_finds_a_verify_that_passes_before_the_run(migrated: Migrated) -> None:
    # After the run verify passes; checked as if before it, that is the defect: nothing found.
    report = backfill.verify(migrated.engine)
    fails(
        lambda: check_verify(report, migrated.info, migrated.where, after_run=False),
        "verify before the run is wrong",
        "problems: none",
    )


@pytest.mark.parametrize(
    "change, fact",
    [
        (lambda r: {"orphaned_run_ids": r.orphaned_run_ids[1:]}, "exactly the orphaned runs"),
        (lambda r: {"runs_checked": r.runs_checked - 1}, "did not check every run"),
        (lambda r: {"snapshots_checked": r.snapshots_checked - 1}, "every snapshot"),
    ],
    ids=["orphans", "runs_checked", "snapshots_checked"],
)
def test_check_verify_finds_a_wrong_figure(
    migrated: Migrated, change: Callable[[backfill.VerifyReport], dict[str, Any]], fact: str
) -> None:
    report = backfill.verify(migrated.engine)
    wrong = dataclasses.replace(report, **change(report))
    fails(
        lambda: check_verify(
            wrong,
            migrated.info,
            migrated.where,
            after_run=True,
            snapshots=report.snapshots_checked,
        ),
        fact,
    )


def test_a_bad_json_column_is_shown_as_such(migrated: Migrated) -> None:
    """The failure shows the text that is not JSON, not a parser traceback."""
    _, snapshot_id = migrated.migrated_snapshot()
    migrated.execute(set_snapshot(snapshot_id, ingredients_data=json.dumps({"not": "a list"})))
    fails(
        lambda: check_backfilled_content(migrated.engine, migrated.info, migrated.where),
        "ingredients_data",
        "'not': 'a list'",
    )
