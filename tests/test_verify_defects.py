"""``verify`` sees every defect it claims to: one planted at a time, on every backend.

Each test starts from the sample data migrated by a real run (``verify`` passes), plants exactly
one defect with one or two statements, and runs ``snapshot-backfill verify --json`` (the
command line's ``main``, in the test's process): exit 1, and exactly one problem with its kind,
run id, snapshot id and the detail's facts. A check that is inverted, dropped or renamed fails
the test of its kind. The last tests plant several defects at once (their order, the listing cap
and ``problems_total``) and a few look-alikes that are not defects; one of them runs the command
in a process of its own, as CI runs it, for the exit code the process itself returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from snapshot_backfill import backfill
from snapshot_backfill.errors import EXIT_FAILED, EXIT_OK
from snapshot_backfill.journal import journal
from snapshot_backfill.models import production_runs, recipe_snapshots
from snapshot_backfill.testing import expectations, factories, running
from snapshot_backfill.testing.backends import Backend

from cli_process import Result, cli, main_in_process
from planted import link, set_snapshot, snapshot_of, unlink
from test_reliability import relax_produced_at

runs = production_runs
snaps = recipe_snapshots


def verify_cli(backend: Backend, *options: str) -> Result:
    """``snapshot-backfill verify --database-url URL OPTIONS``: the command line's ``main``."""
    return main_in_process("verify", "--database-url", backend.cli_url, *options)


def verify_process(backend: Backend, *options: str) -> Result:
    """The same command in a new process, as CI runs it (the exit code the process returns)."""
    return cli("verify", "--database-url", backend.cli_url, *options)


@dataclass
class Migrated:
    """The sample data after a complete run, which ``verify`` passes."""

    backend: Backend
    engine: Engine
    info: expectations.StateInfo

    def snapshot_of(self, run_id: int) -> int:
        return snapshot_of(self.engine, run_id)

    def migrated_run(self, index: int = 0) -> tuple[int, int]:
        """The run id and new snapshot id of the ``index``-th run the backfill migrated."""
        run_id = sorted(self.info.to_migrate)[index]
        return run_id, self.snapshot_of(run_id)

    def execute(self, *statements: Any) -> None:
        with self.engine.begin() as conn:
            for statement in statements:
                conn.execute(statement)

    def row(self, run_id: int) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(
                    runs.c.recipe_id,
                    runs.c.produced_at,
                    snaps.c.id.label("snapshot_id"),
                    snaps.c.snapshot_date,
                )
                .select_from(runs.join(snaps, snaps.c.production_run_id == runs.c.id))
                .where(runs.c.id == run_id)
            ).one()

    def counts(self) -> tuple[int, int]:
        with self.engine.connect() as conn:
            return (
                conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar_one(),
                conn.execute(sa.select(sa.func.count()).select_from(snaps)).scalar_one(),
            )


@pytest.fixture
def migrated(backend: Backend, build_state: Any) -> Migrated:
    info = build_state("from_sample_data")
    engine = backend.make_engine()
    report = running.run_backfill(engine, info)
    assert report.ok and report.migrated == len(info.to_migrate), report
    clean = backfill.verify(engine)
    assert clean.ok and clean.problems == [], clean
    return Migrated(backend, engine, info)


def wrong_link(run_id: int, snapshot_id: int, owner: int) -> dict[str, Any]:
    """The problem of a run linked to the snapshot of run ``owner``."""
    return {
        "kind": "wrong_link",
        "run_id": run_id,
        "snapshot_id": snapshot_id,
        "detail": f"run {run_id} links snapshot {snapshot_id}, which belongs to run {owner}",
    }


def flag_problem(run_id: int, snapshot_id: int) -> dict[str, Any]:
    """The problem of a snapshot the backfill created whose is_backfilled is false."""
    return {
        "kind": "backfill_flag",
        "run_id": run_id,
        "snapshot_id": snapshot_id,
        "detail": f"snapshot {snapshot_id} was created by the backfill, but is_backfilled is false",
    }


def expect_problems(
    migrated: Migrated, *expected: dict[str, Any], orphans: Optional[list[int]] = None
) -> dict[str, Any]:
    """verify: exit 1 and exactly these problems (``detail`` exact or a list
    of facts it must contain); the counts of what it checked; the orphans left alone."""
    result = verify_cli(migrated.backend, "--json")
    assert result.code == EXIT_FAILED, result
    document = result.json
    # The library says what the command printed.
    assert backfill.verify(migrated.engine).to_dict() == document
    problems = document["problems"]
    assert document["ok"] is False, result
    assert document["problems_total"] == len(expected) == len(problems), result
    for found, want in zip(problems, expected):
        assert {k: found[k] for k in ("kind", "run_id", "snapshot_id")} == {
            k: want[k] for k in ("kind", "run_id", "snapshot_id")
        }, result
        if isinstance(want["detail"], str):
            assert found["detail"] == want["detail"], result
        else:
            for fact in want["detail"]:
                assert fact in found["detail"], (fact, result)
    assert (document["runs_checked"], document["snapshots_checked"]) == migrated.counts()
    want_orphans = sorted(migrated.info.orphaned) if orphans is None else orphans
    assert document["orphaned_run_ids"] == want_orphans, result
    return document


@contextlib.contextmanager
def foreign_keys_off(engine: Engine) -> Iterator[Connection]:
    """A transaction in which the database enforces no foreign key (as a hand edit would)."""
    backend = engine.dialect.name
    with engine.connect() as conn:
        raw: Any = None
        if backend == "sqlite":
            # Only outside a transaction, hence on the raw connection before SQLAlchemy begins.
            raw = conn.connection.driver_connection
            raw.execute("PRAGMA foreign_keys = OFF")
        elif backend in ("mysql", "mariadb"):
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
            conn.commit()
        try:
            with conn.begin():
                if backend == "postgresql":
                    conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
                yield conn
        finally:
            if backend == "sqlite":
                raw.execute("PRAGMA foreign_keys = ON")
            elif backend in ("mysql", "mariadb"):
                conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")
                conn.commit()


# --- unlinked_run ----------------------------------------------------------------------------


def test_a_run_without_a_link_or_a_snapshot_is_an_unlinked_run(migrated: Migrated) -> None:
    run_id, snapshot_id = migrated.migrated_run()
    recipe_id = migrated.info.run_recipe[run_id]
    migrated.execute(unlink(run_id), sa.delete(snaps).where(snaps.c.id == snapshot_id))
    expect_problems(
        migrated,
        {
            "kind": "unlinked_run",
            "run_id": run_id,
            "snapshot_id": None,
            "detail": f"run {run_id} (recipe {recipe_id}) is not linked to a snapshot",
        },
    )


def test_a_run_whose_snapshot_exists_but_is_not_linked_is_an_unlinked_run(
    migrated: Migrated,
) -> None:
    run_id, snapshot_id = migrated.migrated_run(2)
    recipe_id = migrated.info.run_recipe[run_id]
    migrated.execute(unlink(run_id))
    expect_problems(
        migrated,
        {
            "kind": "unlinked_run",
            "run_id": run_id,
            "snapshot_id": snapshot_id,
            "detail": f"run {run_id} (recipe {recipe_id}) is not linked to a snapshot "
            f"although snapshot {snapshot_id} exists for it",
        },
    )


def test_a_run_whose_recipe_is_gone_but_whose_snapshot_exists_is_an_unlinked_run(
    migrated: Migrated,
) -> None:
    # Not an orphan: a run would link it to the snapshot that exists.
    run_id, snapshot_id = migrated.migrated_run(1)
    recipe_id = migrated.info.run_recipe[run_id]
    factories.delete_with_foreign_keys_off(migrated.engine, {"recipes": [recipe_id]})
    migrated.execute(unlink(run_id))
    expect_problems(
        migrated,
        {
            "kind": "unlinked_run",
            "run_id": run_id,
            "snapshot_id": snapshot_id,
            "detail": f"run {run_id} (recipe {recipe_id}) is not linked to a snapshot "
            f"although snapshot {snapshot_id} exists for it",
        },
    )


def test_an_undated_run_without_a_snapshot_is_an_unlinked_run_that_says_why(
    migrated: Migrated,
) -> None:
    run_id, snapshot_id = migrated.migrated_run(3)
    recipe_id = migrated.info.run_recipe[run_id]
    relax_produced_at(migrated.engine)
    migrated.execute(
        sa.update(runs)
        .where(runs.c.id == run_id)
        .values(recipe_snapshot_id=None, produced_at=None),
        sa.delete(snaps).where(snaps.c.id == snapshot_id),
    )
    expect_problems(
        migrated,
        {
            "kind": "unlinked_run",
            "run_id": run_id,
            "snapshot_id": None,
            "detail": f"run {run_id} (recipe {recipe_id}) is not linked to a snapshot "
            "(its produced_at is NULL: no date for a snapshot)",
        },
    )


def test_an_orphan_is_listed_but_is_not_a_problem(migrated: Migrated) -> None:
    # The sample's orphans: recipe gone, no snapshot. A run with a snapshot but no recipe
    # whose link is missing is a problem (above); without a snapshot it is not.
    assert migrated.info.orphaned
    result = verify_cli(migrated.backend, "--json")
    assert result.code == EXIT_OK, result
    assert result.json["orphaned_run_ids"] == sorted(migrated.info.orphaned), result
    assert (result.json["problems_total"], result.json["problems"]) == (0, []), result


def test_the_orphans_are_listed_by_run_id_whatever_order_the_table_keeps(
    migrated: Migrated,
) -> None:
    # Each orphan rewritten, the highest id first: PostgreSQL stores the new rows in that
    # order, so only verify's ORDER BY lists them by id.
    orphans = sorted(migrated.info.orphaned)
    assert len(orphans) >= 2, orphans
    migrated.execute(
        *(
            sa.update(runs).where(runs.c.id == run_id).values(notes=runs.c.notes)
            for run_id in reversed(orphans)
        )
    )
    assert backfill.verify(migrated.engine).orphaned_run_ids == orphans


def test_a_linked_run_whose_recipe_is_gone_is_not_an_orphan(migrated: Migrated) -> None:
    # An orphan (recipe gone, no snapshot row) that the application linked to another run's
    # snapshot: a wrong link, and no longer among the runs left unlinked.
    orphan = sorted(migrated.info.orphaned)[0]
    other_run, other_snapshot = migrated.migrated_run(6)
    migrated.execute(link(orphan, other_snapshot))
    expect_problems(
        migrated,
        wrong_link(orphan, other_snapshot, other_run),
        orphans=sorted(set(migrated.info.orphaned) - {orphan}),
    )


# --- wrong_link ------------------------------------------------------------------------------


def test_a_run_linked_to_another_runs_snapshot_is_a_wrong_link(migrated: Migrated) -> None:
    run_id, _ = migrated.migrated_run(4)
    other_run, other_snapshot = migrated.migrated_run(5)
    migrated.execute(
        sa.update(runs).where(runs.c.id == run_id).values(recipe_snapshot_id=other_snapshot)
    )
    expect_problems(
        migrated,
        wrong_link(run_id, other_snapshot, other_run),
    )


def test_two_runs_with_their_links_swapped_are_two_wrong_links_in_run_order(
    migrated: Migrated,
) -> None:
    # Two runs whose snapshots are in run order, their links swapped: listed by the link (the
    # order of an index on it) rather than by run, the two would come the other way round.
    migrated_runs = [migrated.migrated_run(i) for i in range(len(migrated.info.to_migrate))]
    (low_run, low_snapshot), (high_run, high_snapshot) = next(
        (a, b) for a, b in zip(migrated_runs, migrated_runs[1:]) if a[1] < b[1]
    )
    migrated.execute(
        sa.update(runs).where(runs.c.id == low_run).values(recipe_snapshot_id=high_snapshot),
        sa.update(runs).where(runs.c.id == high_run).values(recipe_snapshot_id=low_snapshot),
    )
    expect_problems(
        migrated,
        wrong_link(low_run, high_snapshot, high_run),
        wrong_link(high_run, low_snapshot, low_run),
    )


def test_a_run_linked_to_a_snapshot_that_does_not_exist_is_a_wrong_link(
    migrated: Migrated,
) -> None:
    run_id, _ = migrated.migrated_run(6)
    with migrated.engine.connect() as conn:
        missing = conn.execute(sa.select(sa.func.max(snaps.c.id))).scalar_one() + 1000
    with foreign_keys_off(migrated.engine) as conn:
        conn.execute(sa.update(runs).where(runs.c.id == run_id).values(recipe_snapshot_id=missing))
    expect_problems(
        migrated,
        {
            "kind": "wrong_link",
            "run_id": run_id,
            "snapshot_id": missing,
            "detail": f"run {run_id} links snapshot {missing}, which does not exist",
        },
    )


# --- bad_json --------------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["recipe_data", "ingredients_data"])
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"name": "Brownies"', "Expecting"),
        ("", "Expecting value"),
        ('[{"quantity": NaN}]', "NaN is not a JSON value"),
        ('{"yield_quantity": -Infinity}', "-Infinity is not a JSON value"),
    ],
    ids=["truncated", "empty", "NaN", "-Infinity"],
)
def test_a_snapshot_column_that_is_not_json_is_bad_json(
    migrated: Migrated, column: str, text: str, reason: str
) -> None:
    run_id, snapshot_id = migrated.migrated_run(7)
    migrated.execute(set_snapshot(snapshot_id, **{column: text}))
    expect_problems(
        migrated,
        {
            "kind": "bad_json",
            "run_id": run_id,
            "snapshot_id": snapshot_id,
            "detail": [f"snapshot {snapshot_id}: {column} is not valid JSON (", reason],
        },
    )


@pytest.mark.parametrize(
    ("column", "text", "detail"),
    [
        ("recipe_data", "[]", "recipe_data is a JSON list, not an object"),
        ("recipe_data", '"Brownies"', "recipe_data is a JSON str, not an object"),
        ("recipe_data", "null", "recipe_data is a JSON NoneType, not an object"),
        ("ingredients_data", "{}", "ingredients_data is a JSON dict, not a list"),
        ("ingredients_data", "1.5", "ingredients_data is a JSON float, not a list"),
    ],
    ids=["recipe-list", "recipe-str", "recipe-null", "ingredients-object", "ingredients-number"],
)
def test_a_snapshot_column_of_the_wrong_json_type_is_bad_json(
    migrated: Migrated, column: str, text: str, detail: str
) -> None:
    run_id, snapshot_id = migrated.migrated_run(8)
    migrated.execute(set_snapshot(snapshot_id, **{column: text}))
    expect_problems(
        migrated,
        {
            "kind": "bad_json",
            "run_id": run_id,
            "snapshot_id": snapshot_id,
            "detail": f"snapshot {snapshot_id}: {detail}",
        },
    )


@pytest.mark.parametrize(
    "recipe_data, recipe_fact, ingredients_data, ingredients_fact",
    [
        ("[1]", "recipe_data is a JSON list, not an object", "{", "ingredients_data is not valid"),
        # Past a recipe_data that does not parse, ingredients_data is still checked.
        ("{", "recipe_data is not valid", "{}", "ingredients_data is a JSON dict, not a list"),
    ],
    ids=["wrong-type-then-invalid", "invalid-then-wrong-type"],
)
def test_both_columns_wrong_are_two_problems_in_column_order(
    migrated: Migrated,
    recipe_data: str,
    recipe_fact: str,
    ingredients_data: str,
    ingredients_fact: str,
) -> None:
    run_id, snapshot_id = migrated.migrated_run(9)
    migrated.execute(
        set_snapshot(snapshot_id, recipe_data=recipe_data, ingredients_data=ingredients_data)
    )
    expect_problems(
        migrated,
        *(
            {
                "kind": "bad_json",
                "run_id": run_id,
                "snapshot_id": snapshot_id,
                "detail": [f"snapshot {snapshot_id}: {fact}"],
            }
            for fact in (recipe_fact, ingredients_fact)
        ),
    )


# --- backfill_scale_factor, backfill_snapshot_date, backfill_flag -----------------------------


@pytest.mark.parametrize("scale_factor", [2.0, 0.5])
def test_a_backfilled_snapshot_scaled_other_than_one_is_a_scale_factor_problem(
    migrated: Migrated, scale_factor: float
) -> None:
    run_id, snapshot_id = migrated.migrated_run(10)
    migrated.execute(set_snapshot(snapshot_id, scale_factor=scale_factor))
    expect_problems(
        migrated,
        {
            "kind": "backfill_scale_factor",
            "run_id": run_id,
            "snapshot_id": snapshot_id,
            "detail": f"backfilled snapshot {snapshot_id} has scale_factor {scale_factor}, not 1.0",
        },
    )


@pytest.mark.parametrize(
    "shift", [timedelta(days=1), -timedelta(seconds=1)], ids=["later", "earlier"]
)
def test_a_backfilled_snapshot_dated_other_than_its_run_is_a_date_problem(
    migrated: Migrated, shift: timedelta
) -> None:
    run_id, snapshot_id = migrated.migrated_run(11)
    produced_at = migrated.row(run_id).produced_at
    migrated.execute(set_snapshot(snapshot_id, snapshot_date=produced_at + shift))
    dated = migrated.row(run_id).snapshot_date
    assert dated == produced_at + shift
    expect_problems(
        migrated,
        {
            "kind": "backfill_snapshot_date",
            "run_id": run_id,
            "snapshot_id": snapshot_id,
            "detail": f"backfilled snapshot {snapshot_id} is dated {dated}, "
            f"but run {run_id} was produced at {produced_at}",
        },
    )


def test_a_backfilled_snapshot_of_a_run_without_produced_at_is_a_date_problem(
    migrated: Migrated,
) -> None:
    run_id, snapshot_id = migrated.migrated_run(12)
    dated = migrated.row(run_id).snapshot_date
    relax_produced_at(migrated.engine)
    migrated.execute(sa.update(runs).where(runs.c.id == run_id).values(produced_at=None))
    expect_problems(
        migrated,
        {
            "kind": "backfill_snapshot_date",
            "run_id": run_id,
            "snapshot_id": snapshot_id,
            "detail": f"backfilled snapshot {snapshot_id} is dated {dated}, "
            f"but run {run_id} has no produced_at",
        },
    )


def test_a_snapshot_the_backfill_created_but_not_flagged_is_a_flag_problem(
    migrated: Migrated,
) -> None:
    run_id, snapshot_id = migrated.migrated_run(13)
    migrated.execute(set_snapshot(snapshot_id, is_backfilled=False))
    expect_problems(
        migrated,
        flag_problem(run_id, snapshot_id),
    )


def test_flag_problems_are_listed_by_snapshot_not_in_journal_order(migrated: Migrated) -> None:
    pair = sorted((migrated.migrated_run(i) for i in (13, 14)), key=lambda run: run[1])
    (low_run, low_snapshot), (high_run, high_snapshot) = pair
    migrated.execute(
        set_snapshot(low_snapshot, is_backfilled=False),
        set_snapshot(high_snapshot, is_backfilled=False),
        # The lower snapshot journaled last, as a later run would have.
        sa.update(journal)
        .where(journal.c.snapshot_id == low_snapshot)
        .values(id=journal.c.id + 1000),
    )
    expect_problems(
        migrated,
        flag_problem(low_run, low_snapshot),
        flag_problem(high_run, high_snapshot),
    )


def test_a_scale_and_a_date_problem_of_one_snapshot_are_both_reported(migrated: Migrated) -> None:
    run_id, snapshot_id = migrated.migrated_run(14)
    produced_at = migrated.row(run_id).produced_at
    migrated.execute(
        set_snapshot(snapshot_id, scale_factor=3.0, snapshot_date=produced_at + timedelta(hours=1))
    )
    expect_problems(
        migrated,
        {
            "kind": "backfill_scale_factor",
            "run_id": run_id,
            "snapshot_id": snapshot_id,
            "detail": [f"backfilled snapshot {snapshot_id} has scale_factor 3.0"],
        },
        {
            "kind": "backfill_snapshot_date",
            "run_id": run_id,
            "snapshot_id": snapshot_id,
            "detail": [f"but run {run_id} was produced at {produced_at}"],
        },
    )


def test_backfill_problems_are_listed_by_snapshot_not_by_run(migrated: Migrated) -> None:
    # The lowest run's snapshot made again by a later run: its id is now above the others'.
    low_run, old_snapshot = migrated.migrated_run(0)
    migrated.execute(unlink(low_run), sa.delete(snaps).where(snaps.c.id == old_snapshot))
    assert backfill.run(migrated.engine).migrated == 1
    new_snapshot = snapshot_of(migrated.engine, low_run)
    high_run, high_snapshot = migrated.migrated_run(1)
    assert low_run < high_run and high_snapshot < new_snapshot
    migrated.execute(
        set_snapshot(new_snapshot, scale_factor=2.0), set_snapshot(high_snapshot, scale_factor=2.0)
    )
    expect_problems(
        migrated,
        *(
            {
                "kind": "backfill_scale_factor",
                "run_id": run_id,
                "snapshot_id": snapshot_id,
                "detail": f"backfilled snapshot {snapshot_id} has scale_factor 2.0, not 1.0",
            }
            for run_id, snapshot_id in ((high_run, high_snapshot), (low_run, new_snapshot))
        ),
    )


# --- look-alikes that are not defects --------------------------------------------------------


def test_snapshots_the_application_wrote_are_not_held_to_the_backfill_rules(
    migrated: Migrated,
) -> None:
    # An application snapshot is scaled and dated as the baker chose, and is not flagged.
    run_id = sorted(migrated.info.already_linked)[0]
    snapshot_id = migrated.snapshot_of(run_id)
    migrated.execute(
        set_snapshot(snapshot_id, scale_factor=4.0, snapshot_date=datetime(2020, 1, 1))
    )
    linked_existing = sorted(migrated.info.to_link_existing.values())
    with migrated.engine.connect() as conn:
        flags = conn.execute(
            sa.select(snaps.c.is_backfilled).where(snaps.c.id.in_(linked_existing))
        ).scalars()
        journaled = conn.execute(
            sa.select(journal.c.created_snapshot).where(journal.c.snapshot_id.in_(linked_existing))
        ).scalars()
        # The existing snapshots the run linked are the application's: journaled as not
        # created, and not flagged, which is no flag problem.
        assert (set(flags), set(journaled)) == ({False}, {False})
    result = verify_cli(migrated.backend, "--json")
    assert result.code == EXIT_OK, result
    assert result.json["ok"] is True and result.json["problems"] == [], result


@pytest.mark.parametrize("backend_kind", ["sqlite"], indirect=True)
def test_two_spellings_of_one_instant_are_one_date(migrated: Migrated) -> None:
    # SQLite keeps dates as text: a snapshot_date written without the microseconds the run's
    # produced_at has is the same instant, not a date problem.
    with migrated.engine.begin() as conn:
        run_id, produced = conn.exec_driver_sql(
            "SELECT id, produced_at FROM production_runs WHERE produced_at LIKE '%.000000' "
            "AND id IN (SELECT production_run_id FROM recipe_snapshots WHERE is_backfilled) "
            "ORDER BY id LIMIT 1"
        ).one()
        conn.exec_driver_sql(
            "UPDATE recipe_snapshots SET snapshot_date = ? WHERE production_run_id = ?",
            (produced[: -len(".000000")], run_id),
        )
    assert migrated.row(run_id).snapshot_date == migrated.row(run_id).produced_at
    result = verify_cli(migrated.backend, "--json")
    assert result.code == EXIT_OK, result


# --- several at once -------------------------------------------------------------------------


def plant_one_of_each(migrated: Migrated) -> list[tuple[str, int, Optional[int]]]:
    """One defect of each kind on its own run; the problems in the order verify lists them."""
    ids = [migrated.migrated_run(i) for i in range(8)]
    (r0, s0), (r1, s1), (r2, _), (_r3, s3), (r4, s4), (r5, s5), (r6, s6), (r7, s7) = ids
    produced_at = migrated.row(r6).produced_at
    migrated.execute(
        unlink(r0),
        unlink(r1),
        sa.delete(snaps).where(snaps.c.id == s1),
        sa.update(runs).where(runs.c.id == r2).values(recipe_snapshot_id=s3),
        # s5 first: PostgreSQL stores the rewritten rows in that order, so only verify's ORDER
        # BY lists s4 first.
        set_snapshot(s5, ingredients_data='{"not": "a list"}'),
        set_snapshot(s4, recipe_data="{"),
        set_snapshot(s6, scale_factor=2.0, snapshot_date=produced_at - timedelta(days=3)),
        set_snapshot(s7, is_backfilled=False),
    )
    # Links (by run id), JSON (by snapshot id), backfill rules (by snapshot id), then flags.
    return [
        ("unlinked_run", r0, s0),
        ("unlinked_run", r1, None),
        ("wrong_link", r2, s3),
        ("bad_json", r4, s4),
        ("bad_json", r5, s5),
        ("backfill_scale_factor", r6, s6),
        ("backfill_snapshot_date", r6, s6),
        ("backfill_flag", r7, s7),
    ]


def test_several_defects_are_all_reported_in_order(migrated: Migrated) -> None:
    expected = plant_one_of_each(migrated)
    result = verify_cli(migrated.backend, "--json")
    assert result.code == EXIT_FAILED, result
    found = [(p["kind"], p["run_id"], p["snapshot_id"]) for p in result.json["problems"]]
    assert found == expected, result
    assert result.json["problems_total"] == len(expected)
    human = verify_cli(migrated.backend)
    assert human.code == EXIT_FAILED, human
    lines = human.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        f"PROBLEM {kind}" for kind, _, _ in expected
    ], human
    runs_total, snapshots_total = migrated.counts()
    assert lines[-1] == (
        f"Verify FAILED ({len(expected)} problems): {runs_total} runs, {snapshots_total} "
        f"snapshots checked; {len(migrated.info.orphaned)} orphaned runs (recipe gone) "
        "left unlinked"
    ), human


@pytest.mark.process
def test_verify_exits_1_from_a_process_of_its_own(migrated: Migrated) -> None:
    """The exit code CI sees is the process's own, not only what ``main`` returns."""
    expected = plant_one_of_each(migrated)
    result = verify_process(migrated.backend, "--json")
    assert result.code == EXIT_FAILED, result
    assert result.json["problems_total"] == len(expected), result


def test_verify_lists_the_first_problems_up_to_its_cap_and_counts_them_all(
    migrated: Migrated,
) -> None:
    # More unlinked runs than verify lists: copies of a run, recorded without a snapshot.
    extra = backfill.MAX_PROBLEMS_LISTED + 1
    run_id = sorted(migrated.info.to_migrate)[0]
    with migrated.engine.begin() as conn:
        template = dict(conn.execute(sa.select(runs).where(runs.c.id == run_id)).one()._mapping)
        first_new = conn.execute(sa.select(sa.func.max(runs.c.id))).scalar_one() + 1
        rows = []
        for n in range(extra):
            row = {**template, "id": first_new + n, "uuid": f"00000000-0000-4000-8000-{n:012d}"}
            row["recipe_snapshot_id"] = None
            rows.append(row)
        conn.execute(sa.insert(runs), rows)
    expected = plant_one_of_each(migrated)
    total = extra + len(expected)
    result = verify_cli(migrated.backend, "--json")
    assert result.code == EXIT_FAILED, result
    document = result.json
    assert document["problems_total"] == total
    listed = document["problems"]
    assert len(listed) == backfill.MAX_PROBLEMS_LISTED
    # The unlinked runs come first, by run id: the two planted ones, then the new runs; the
    # wrong link and the rest are counted, not listed.
    head = [(p["kind"], p["run_id"], p["snapshot_id"]) for p in listed[:2]]
    assert head == expected[:2]
    assert [(p["kind"], p["run_id"]) for p in listed[2:]] == [
        ("unlinked_run", first_new + n) for n in range(backfill.MAX_PROBLEMS_LISTED - 2)
    ]
    human = verify_cli(migrated.backend)
    assert human.code == EXIT_FAILED, human
    lines = human.stdout.splitlines()
    assert sum(line.startswith("PROBLEM ") for line in lines) == backfill.MAX_PROBLEMS_LISTED
    assert lines[-2] == f"... and {total - backfill.MAX_PROBLEMS_LISTED} more problems", human
    assert lines[-1].startswith(f"Verify FAILED ({total} problems): "), human


def test_the_cap_applies_to_the_listing_only(
    migrated: Migrated, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = plant_one_of_each(migrated)
    monkeypatch.setattr(backfill, "MAX_PROBLEMS_LISTED", 3)
    report = backfill.verify(migrated.engine)
    assert [(p.kind, p.run_id, p.snapshot_id) for p in report.problems] == expected[:3]
    assert report.problems_total == len(expected) and not report.ok
