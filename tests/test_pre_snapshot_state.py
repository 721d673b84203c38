"""The pre_snapshot_schema state on every backend: upgrade-schema, then the backfill.

A database of before the snapshot feature, with history (``states.build_pre_snapshot_schema``),
taken through what a user does: ``upgrade-schema --dry-run``, ``upgrade-schema``, ``plan``,
``run``, ``verify``, all through the command line, each checked against the state's declared
expectations and against whole-database fingerprints:

==========================================  ====================================================
the dry run changes nothing                 ``test_dry_run_upgrade_changes_nothing``
upgrade, then backfill, then verify         ``test_upgrade_then_backfill_then_verify_passes``
a second upgrade does nothing               ``test_second_upgrade_finds_nothing_to_do``
rows of the tables found are kept           ``test_upgrade_keeps_every_row_it_found``
an interrupted upgrade completes on re-run  ``test_interrupted_upgrade_completes_on_rerun``
the state holds the history it claims       ``test_state_holds_the_history_it_claims``
==========================================  ====================================================
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.engine import URL, Engine

from snapshot_backfill import backfill
from snapshot_backfill.cli import main
from snapshot_backfill.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from snapshot_backfill.models import production_runs, recipe_snapshots, recipes
from snapshot_backfill.schema_upgrade import (
    UpgradePlan,
    find_missing,
    plan_upgrade,
    upgrade_schema,
)
from snapshot_backfill.testing import fingerprint
from snapshot_backfill.testing.backends import MARIADB, Backend, provision
from snapshot_backfill.testing.blueprint import (
    PRE_SNAPSHOT_DELETED_RECIPES,
    PRE_SNAPSHOT_RECIPES,
    PRE_SNAPSHOT_SCHEMA,
)
from snapshot_backfill.testing.expectations import StateInfo, describe, historical_cases
from snapshot_backfill.testing.fingerprint import Fingerprint, assert_same, explain
from snapshot_backfill.testing.invariants import (
    check_backfilled_content,
    check_links_after_run,
    check_plan,
    check_verify,
    check_writes,
)
from snapshot_backfill.testing.running import sqlite_files
from snapshot_backfill.testing.schema_images import (
    Interrupted,
    SchemaImage,
    assert_same_schema,
    create_snapshot_schema,
    interrupt_at,
    schema_fingerprint,
    upgraded_schema_fingerprint,
)

# The steps an interrupted upgrade stops before; a plan has at least three on every backend.
STOP_POINTS = ("the second step", "the middle step", "the last step")


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return f"exit {self.exit_code}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


def invoke(command: str, backend: Backend, *options: str) -> CliResult:
    """Run ``snapshot-backfill COMMAND --database-url <the backend's database> OPTIONS``."""
    out, err = io.StringIO(), io.StringIO()
    argv = [command, "--database-url", backend.cli_url, *options]
    code = main(argv, stdout=out, stderr=err, stdin=io.StringIO(""))
    return CliResult(code, out.getvalue(), err.getvalue())


def where(info: StateInfo, backend: Backend) -> dict[str, Any]:
    return describe(info, backend.describe())


def whole_schema(engine: Engine) -> SchemaImage:
    """Every table's reflection (columns, keys, indexes, constraints): what fingerprints miss."""
    return schema_fingerprint(engine, sa.inspect(engine).get_table_names())


def rows_on_columns(
    image: fingerprint.TableImage, columns: tuple[str, ...]
) -> list[tuple[str, ...]]:
    """A table's rows reduced to ``columns`` (those it had before new ones were added)."""
    positions = [image.columns.index(c) for c in columns]
    return sorted(tuple(row[p] for p in positions) for row in image.rows)


def assert_rows_kept(before: Fingerprint, after: Fingerprint, context: Mapping[str, Any]) -> None:
    """Every table of ``before`` is in ``after`` with every row; added columns aside."""
    for name, table in before.tables.items():
        assert name in after.tables, explain(f"table {name} is gone", context)
        kept = after.tables[name]
        missing_columns = [c for c in table.columns if c not in kept.columns]
        assert not missing_columns, explain(
            f"table {name} lost columns", context, columns=", ".join(missing_columns)
        )
        assert rows_on_columns(kept, table.columns) == list(table.rows), explain(
            f"the rows of table {name} changed", context, differences=before.diff(after)
        )


def statements(plan: UpgradePlan, first_step: int = 1) -> Counter[str]:
    """The statements of a plan's steps from ``first_step`` on."""
    return Counter(s for step in plan.steps[first_step - 1 :] for s in step.statements)


def stop_before(plan: UpgradePlan, which: str) -> int:
    """The number of the step named by one of ``STOP_POINTS``."""
    steps = plan.steps
    assert len(steps) >= 3, f"a plan of {len(steps)} steps has no middle: {plan.sql_script()}"
    position = {"the second step": 1, "the middle step": len(steps) // 2, "the last step": -1}
    return steps[position[which]].number


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def pre_snapshot(build_state: Callable[[str], StateInfo]) -> StateInfo:
    """The test's database holds the pre_snapshot_schema state; returns its expectations."""
    return build_state(PRE_SNAPSHOT_SCHEMA)


@pytest.fixture(scope="module")
def reference_schema(
    backend_kind: str,
    server_urls: dict[str, Optional[URL]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SchemaImage]:
    """How the models' create_all reflects on this backend: what an upgrade must equal."""
    directory: Path = tmp_path_factory.mktemp("reference-schema")
    with provision(backend_kind, server_urls[backend_kind], directory) as reference:
        engine = reference.make_engine()
        create_snapshot_schema(engine)
        yield upgraded_schema_fingerprint(engine)


# --- the tests ----------------------------------------------------------------------------


def test_dry_run_upgrade_changes_nothing(backend: Backend, pre_snapshot: StateInfo) -> None:
    """``upgrade-schema --dry-run`` prints the SQL it would run and writes nothing at all."""
    context = where(pre_snapshot, backend)
    engine = backend.make_engine()
    gaps_before = find_missing(engine)
    assert gaps_before, explain("the state already has the snapshot schema", context)
    schema_before, rows_before = whole_schema(engine), fingerprint.take(engine)
    engine.dispose()
    files_before = sqlite_files(backend.path) if backend.path is not None else {}

    result = invoke("upgrade-schema", backend, "--dry-run")

    assert result.exit_code == EXIT_OK, str(result)
    assert "CREATE TABLE recipe_snapshots" in result.stdout, str(result)
    assert "dry run: nothing was changed" in result.stdout, str(result)
    assert_same(rows_before, fingerprint.take(engine), "the dry run wrote rows", context)
    assert whole_schema(engine) == schema_before, "the dry run changed the schema"
    assert find_missing(engine) == gaps_before
    if backend.path is not None:
        engine.dispose()  # every connection closed: SQLite removes its side files
        assert sqlite_files(backend.path) == files_before, "the dry run changed the file's bytes"


def test_upgrade_then_backfill_then_verify_passes(
    backend: Backend, pre_snapshot: StateInfo
) -> None:
    """Refused before the upgrade; after it, plan, run and verify do what the state declares."""
    context = where(pre_snapshot, backend)
    engine = backend.make_engine()
    refused = invoke("verify", backend)
    assert refused.exit_code == EXIT_BAD_INPUT, str(refused)
    assert "upgrade-schema" in refused.stderr, str(refused)

    upgraded = invoke("upgrade-schema", backend, "--yes", "--no-backup")
    assert upgraded.exit_code == EXIT_OK, str(upgraded)
    assert find_missing(engine) == [], str(upgraded)

    planned = invoke("plan", backend, "--json")
    assert planned.exit_code == EXIT_OK, str(planned)
    expected_plan = pre_snapshot.expected_plan()
    assert {k: planned.json()[k] for k in expected_plan} == expected_plan, str(planned)
    check_plan(backfill.plan(engine), pre_snapshot, context)

    failing = invoke("verify", backend)
    assert failing.exit_code == EXIT_FAILED, str(failing)
    check_verify(backfill.verify(engine), pre_snapshot, context, after_run=False)

    before_run = fingerprint.take(engine)
    batch_size = str(pre_snapshot.batch_size)
    ran = invoke("run", backend, "--yes", "--no-backup", "--json", "--batch-size", batch_size)
    assert ran.exit_code == EXIT_OK, str(ran)
    report = ran.json()
    assert (report["migrated"], report["skipped_orphans"], report["linked_existing"]) == (
        len(pre_snapshot.to_migrate),
        len(pre_snapshot.orphaned),
        0,
    ), str(ran)
    assert report["orphaned_run_ids"] == sorted(pre_snapshot.orphaned), str(ran)
    assert (report["errors"], report["batches"]) == ([], pre_snapshot.batches), str(ran)
    check_writes(before_run, fingerprint.take(engine), pre_snapshot, context)
    check_backfilled_content(engine, pre_snapshot, context)
    check_links_after_run(engine, pre_snapshot, context)

    passing = invoke("verify", backend)
    assert passing.exit_code == EXIT_OK, str(passing)
    snapshots = len(pre_snapshot.to_migrate)
    check_verify(
        backfill.verify(engine), pre_snapshot, context, after_run=True, snapshots=snapshots
    )


def test_second_upgrade_finds_nothing_to_do(backend: Backend, pre_snapshot: StateInfo) -> None:
    """Once upgraded, ``upgrade-schema`` reports nothing to do and writes nothing."""
    context = where(pre_snapshot, backend)
    engine = backend.make_engine()
    first = upgrade_schema(engine)
    assert first.steps_executed, explain("the first upgrade did nothing", context)
    schema_before, rows_before = whole_schema(engine), fingerprint.take(engine)
    engine.dispose()
    files_before = sqlite_files(backend.path) if backend.path is not None else {}

    again = invoke("upgrade-schema", backend, "--yes", "--no-backup", "--json")

    assert again.exit_code == EXIT_OK, str(again)
    document = again.json()
    assert document["already_current"] is True, str(again)
    assert (document["missing"], document["steps"], document["steps_executed"]) == ([], [], 0)
    assert_same(rows_before, fingerprint.take(engine), "the second upgrade wrote rows", context)
    assert whole_schema(engine) == schema_before, "the second upgrade changed the schema"
    if backend.path is not None:
        engine.dispose()
        assert sqlite_files(backend.path) == files_before, "the second upgrade changed the file"


def test_upgrade_keeps_every_row_it_found(
    backend: Backend, pre_snapshot: StateInfo, reference_schema: SchemaImage
) -> None:
    """Every table's rows are as they were; the new columns hold the models' defaults."""
    context = where(pre_snapshot, backend)
    engine = backend.make_engine()
    before = fingerprint.take(engine)

    upgrade_schema(engine)

    after = fingerprint.take(engine)
    assert_same_schema(upgraded_schema_fingerprint(engine), reference_schema, backend.kind)
    assert_rows_kept(before, after, context)
    assert set(after.tables) - set(before.tables) == {recipe_snapshots.name}
    assert after.row_count(recipe_snapshots.name) == 0
    with engine.connect() as conn:
        new_recipe_values = conn.execute(
            select(recipes.c.base_recipe_id, recipes.c.variant_name, recipes.c.is_production_ready)
        ).all()
        linked_runs = conn.execute(
            select(func.count()).where(production_runs.c.recipe_snapshot_id.is_not(None))
        ).scalar_one()
    live_recipes = len(PRE_SNAPSHOT_RECIPES) - len(PRE_SNAPSHOT_DELETED_RECIPES)
    assert new_recipe_values == [(None, None, False)] * live_recipes
    assert linked_runs == 0


def test_state_holds_the_history_it_claims(backend: Backend, pre_snapshot: StateInfo) -> None:
    """The state holds orphans, an archived recipe, one without and one with a lost ingredient."""
    engine = backend.make_engine()
    upgrade_schema(engine)
    cases = historical_cases(engine)
    present = {case for case, runs in cases.items() if runs}
    assert present == {
        "orphaned run (recipe deleted)",
        "run of an archived recipe",
        "run of a recipe without ingredients",
        "run of a recipe with a missing ingredient",
    }, explain(
        "the state is not the history it claims",
        where(pre_snapshot, backend),
        **{case: str(runs) for case, runs in cases.items()},
    )
    orphan_recipes = {pre_snapshot.run_recipe[r] for r in cases["orphaned run (recipe deleted)"]}
    assert orphan_recipes == set(PRE_SNAPSHOT_DELETED_RECIPES)


@pytest.mark.parametrize("which", STOP_POINTS)
def test_interrupted_upgrade_completes_on_rerun(
    backend: Backend, pre_snapshot: StateInfo, reference_schema: SchemaImage, which: str
) -> None:
    """Stopped before a step, the upgrade leaves rows intact; re-run, it completes the schema.

    SQLite and PostgreSQL run every step in one transaction: nothing is left. MariaDB commits
    each step: what is left to do is exactly the steps not reached.
    """
    context = {**where(pre_snapshot, backend), "stopped before": which}
    engine = backend.make_engine()
    before = fingerprint.take(engine)
    gaps_before = find_missing(engine)
    plan = plan_upgrade(engine)
    stop = stop_before(plan, which)
    seen: list[int] = []

    with pytest.raises(Interrupted):
        upgrade_schema(engine, on_step=interrupt_at(stop, seen))

    assert seen == list(range(1, stop + 1))
    interrupted = fingerprint.take(engine)
    assert_rows_kept(before, interrupted, context)
    remaining = plan_upgrade(engine)
    if backend.kind == MARIADB:
        assert statements(remaining) == statements(plan, stop), explain(
            "the steps left are not the ones the interruption skipped",
            context,
            planned=plan.sql_script(),
            left=remaining.sql_script(),
        )
    else:
        assert find_missing(engine) == gaps_before
        assert_same(before, interrupted, "the interrupted upgrade left changes", context)

    report = upgrade_schema(engine)

    assert len(report.steps_executed) == len(remaining.steps)
    assert find_missing(engine) == []
    assert_same_schema(upgraded_schema_fingerprint(engine), reference_schema, str(context))
    assert_rows_kept(before, fingerprint.take(engine), context)
    check_plan(backfill.plan(engine), pre_snapshot, context)
