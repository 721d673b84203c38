"""The ``--json`` reports: every key the README documents, with its type, on every backend.

The README's "JSON keys" paragraph is the contract: each command's object has exactly the keys
below, each of the type given, and the lists hold objects of the documented shape. Each command
runs (the command line's ``main``, in the test's process) on a database where every list has
something in it: the sample data with an undated run and a recipe that cannot be snapshotted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from snapshot_backfill import __version__, backfill
from snapshot_backfill.backfill import MAX_PROBLEMS_LISTED, RunError
from snapshot_backfill.database import display_url
from snapshot_backfill.errors import EXIT_FAILED, EXIT_OK
from snapshot_backfill.models import production_runs, recipe_ingredients, recipes
from snapshot_backfill.testing import blueprint, expectations
from snapshot_backfill.testing.backends import Backend

from cli_process import main_in_process
from test_reliability import recipe_with_most_runs_to_migrate, relax_produced_at

README = Path(__file__).resolve().parents[1] / "README.md"

INT = (int,)
STR = (str,)
LIST = (list,)
BOOL = (bool,)
OPTIONAL_INT = (int, type(None))

COUNTS = {
    "total_runs": INT,
    "already_linked": INT,
    "to_migrate": INT,
    "to_link_existing": INT,
    "orphaned": INT,
    "undated": INT,
}
PLAN = {
    **COUNTS,
    "orphaned_run_ids": LIST,
    "undated_run_ids": LIST,
    "recipe_errors": LIST,
    "per_recipe": LIST,
    "max_run_id": OPTIONAL_INT,
}
RECIPE_ERROR = {"recipe_id": INT, "runs": INT, "error": STR}
PER_RECIPE = {"recipe_id": INT, "recipe_name": (str, type(None)), **COUNTS}
RUN = {
    **PLAN,
    "migrated": INT,
    "linked_existing": INT,
    "skipped_orphans": INT,
    "skipped_undated": INT,
    "errors": LIST,
    "batches": INT,
    "duration_s": (float,),
    "interrupted": BOOL,
    "too_recent": INT,
    "longest_batch_s": (float,),
    "pause_s": (float,),
    "run_token": STR,
    "tool_version": STR,
    "database": STR,
}
RUN_ERROR = {"run_id": INT, "error": STR, "recipe_id": INT}
VERIFY = {
    "ok": BOOL,
    "problems": LIST,
    "problems_total": INT,
    "runs_checked": INT,
    "snapshots_checked": INT,
    "orphaned_run_ids": LIST,
}
PROBLEM = {"kind": STR, "detail": STR, "run_id": OPTIONAL_INT, "snapshot_id": OPTIONAL_INT}
PROBLEM_KINDS = {
    "unlinked_run",
    "wrong_link",
    "bad_json",
    "backfill_scale_factor",
    "backfill_snapshot_date",
    "backfill_flag",
}
ROLLBACK = {
    "journal_entries": INT,
    "runs_unlinked": INT,
    "snapshots_deleted": INT,
    "left_alone": INT,
    "batches": INT,
    "duration_s": (float,),
    "interrupted": BOOL,
}
UPGRADE = {
    "already_current": BOOL,
    "dry_run": BOOL,
    "missing": LIST,
    "steps": LIST,
    "steps_executed": INT,
    "sql": STR,
}
ALL_SHAPES = (PLAN, RECIPE_ERROR, PER_RECIPE, RUN, RUN_ERROR, VERIFY, PROBLEM, ROLLBACK, UPGRADE)


def check_shape(document: Any, shape: dict[str, tuple[type, ...]], what: str) -> None:
    """Exactly the keys of ``shape``, each of its type (a bool is no int, an int no float)."""
    assert isinstance(document, dict), (what, document)
    assert sorted(document) == sorted(shape), (what, document)
    wrong = {k: type(v).__name__ for k, v in document.items() if type(v) not in shape[k]}
    assert not wrong, (what, wrong, document)


def check_ids(values: list[Any], what: str) -> None:
    assert all(type(v) is int for v in values) and values == sorted(values), (what, values)


def test_every_key_pinned_here_is_in_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("JSON keys:")
    paragraph = text[start : text.index("\n\n", start)]
    documented = set(re.findall(r"`([a-z_]+)`", paragraph))
    documented |= {
        k for group in re.findall(r"`\{([a-z_, ]+)\}`", paragraph) for k in group.split(", ")
    }
    pinned = {key for shape in ALL_SHAPES for key in shape} | PROBLEM_KINDS
    assert pinned - documented == set()
    assert f"the first {MAX_PROBLEMS_LISTED}" in paragraph


def _plant_recipe_error(engine: Engine, recipe_id: int) -> None:
    """Make one recipe's snapshot impossible to build or store, as each backend allows."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":  # text in a REAL column
            value: Any = sa.literal_column("'a pinch'")
            conn.execute(
                sa.update(recipe_ingredients)
                .where(recipe_ingredients.c.recipe_id == recipe_id)
                .values(quantity=value)
            )
        elif engine.dialect.name == "postgresql":  # no JSON spelling for infinity
            conn.execute(
                sa.update(recipe_ingredients)
                .where(recipe_ingredients.c.recipe_id == recipe_id)
                .values(quantity=float("inf"))
            )
        else:  # a JSON text larger than MariaDB's TEXT
            conn.execute(
                sa.update(recipes).where(recipes.c.id == recipe_id).values(notes="漢" * 20000)
            )


class Messy:
    """The sample data with one undated run and one recipe that cannot be snapshotted."""

    def __init__(self, backend: Backend, info: expectations.StateInfo) -> None:
        self.backend = backend
        self.info = info
        engine = self.engine = backend.make_engine()
        self.bad_recipe, self.bad_runs = recipe_with_most_runs_to_migrate(info)
        self.undated = next(r for r in sorted(info.to_migrate) if r not in self.bad_runs)
        relax_produced_at(engine)
        with engine.begin() as conn:
            conn.execute(
                sa.update(production_runs)
                .where(production_runs.c.id == self.undated)
                .values(produced_at=None)
            )
        _plant_recipe_error(engine, self.bad_recipe)

    def cli(self, command: str, *options: str) -> Any:
        return main_in_process(command, "--database-url", self.backend.cli_url, *options)


@pytest.fixture
def messy(backend: Backend, build_state: Any) -> Messy:
    return Messy(backend, build_state("from_sample_data"))


def test_plan_json(messy: Messy) -> None:
    result = messy.cli("plan", "--json")
    assert result.code == EXIT_OK, result
    plan = result.json
    check_shape(plan, PLAN, "plan")
    check_ids(plan["orphaned_run_ids"], "orphaned_run_ids")
    check_ids(plan["undated_run_ids"], "undated_run_ids")
    assert plan["orphaned_run_ids"] == sorted(messy.info.orphaned)
    assert plan["orphaned"] == len(plan["orphaned_run_ids"])
    assert plan["undated_run_ids"] == [messy.undated] and plan["undated"] == 1
    assert plan["total_runs"] == sum(
        plan[k] for k in ("already_linked", "to_migrate", "to_link_existing", "orphaned", "undated")
    )
    for error in plan["recipe_errors"]:
        check_shape(error, RECIPE_ERROR, "plan.recipe_errors[]")
    assert [(e["recipe_id"], e["runs"]) for e in plan["recipe_errors"]] == [
        (messy.bad_recipe, len(messy.bad_runs))
    ]
    assert backfill.plan(messy.engine).to_dict() == plan
    for row in plan["per_recipe"]:
        check_shape(row, PER_RECIPE, "plan.per_recipe[]")
    assert [r["recipe_id"] for r in plan["per_recipe"]] == sorted(
        set(messy.info.run_recipe.values())
    )
    for key in COUNTS:
        assert sum(r[key] for r in plan["per_recipe"]) == plan[key], key
    assert {r["recipe_id"] for r in plan["per_recipe"] if r["recipe_name"] is None} == (
        set(messy.info.run_recipe.values()) - messy.info.recipe_ids
    )


def test_run_json_and_its_report_file(messy: Messy, tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    result = messy.cli(
        "run", "--json", "--yes", "--no-backup", "--batch-size", "7", "--report", str(report_file)
    )
    assert result.code == EXIT_FAILED, result
    report = result.json
    check_shape(report, RUN, "run")
    assert json.loads(report_file.read_text(encoding="utf-8")) == report
    for error in report["errors"]:
        check_shape(error, RUN_ERROR, "run.errors[]")
    assert [(e["run_id"], e["recipe_id"]) for e in report["errors"]] == [
        (r, messy.bad_recipe) for r in messy.bad_runs
    ]
    info = messy.info
    assert (report["migrated"], report["linked_existing"]) == (
        len(info.to_migrate) - len(messy.bad_runs) - 1,
        len(info.to_link_existing),
    )
    assert (report["skipped_orphans"], report["skipped_undated"]) == (len(info.orphaned), 1)
    assert report["batches"] == -(-len(info.unlinked) // 7)
    assert report["interrupted"] is False and report["duration_s"] >= 0
    # Milliseconds: a duration is not reported to the nanosecond.
    assert report["duration_s"] == round(report["duration_s"], 3)
    assert report["tool_version"] == __version__
    assert len(report["run_token"]) == 36
    assert report["database"] == display_url(messy.backend.url)


def test_the_library_reports_are_the_commands_objects(messy: Messy) -> None:
    # What run and rollback return (the CLI adds tool_version and database to run's).
    report = backfill.run(messy.engine, batch_size=7).to_dict()
    check_shape(
        report, {k: t for k, t in RUN.items() if k not in ("tool_version", "database")}, "run"
    )
    for error in report["errors"]:
        check_shape(error, RUN_ERROR, "run.errors[]")
    assert report["duration_s"] == round(report["duration_s"], 3)
    undone = backfill.rollback(messy.engine, batch_size=10).to_dict()
    check_shape(undone, ROLLBACK, "rollback")
    assert undone["duration_s"] == round(undone["duration_s"], 3)
    assert undone["journal_entries"] == report["migrated"] + report["linked_existing"]


def test_the_reports_give_seconds_to_the_millisecond() -> None:
    plan = backfill.Plan(
        total_runs=0, already_linked=0, to_migrate=0, to_link_existing=0, orphaned_run_ids=[]
    )
    ran = backfill.RunReport(
        plan, run_token="t", duration_s=12.34567, longest_batch_s=0.04449, pause_s=0.12
    ).to_dict()
    assert (ran["duration_s"], ran["longest_batch_s"], ran["pause_s"]) == (12.346, 0.044, 0.12)
    assert backfill.RollbackReport(duration_s=2.00049).to_dict()["duration_s"] == 2.0


def test_a_run_error_names_its_recipe_only_when_the_recipe_is_the_cause() -> None:
    assert RunError(7, "constraint failed").to_dict() == {"run_id": 7, "error": "constraint failed"}
    assert RunError(7, "bad", recipe_id=3).to_dict() == {
        "run_id": 7,
        "error": "bad",
        "recipe_id": 3,
    }


def test_verify_json(messy: Messy) -> None:
    assert messy.cli("run", "--yes", "--no-backup").code == EXIT_FAILED
    result = messy.cli("verify", "--json")
    assert result.code == EXIT_FAILED, result
    verified = result.json
    check_shape(verified, VERIFY, "verify")
    assert backfill.verify(messy.engine).to_dict() == verified
    for problem in verified["problems"]:
        check_shape(problem, PROBLEM, "verify.problems[]")
        assert problem["kind"] in PROBLEM_KINDS, problem
    assert sorted(p["run_id"] for p in verified["problems"]) == sorted(
        [messy.undated, *messy.bad_runs]
    )
    assert verified["problems_total"] == len(verified["problems"])
    assert verified["ok"] is False
    check_ids(verified["orphaned_run_ids"], "orphaned_run_ids")
    assert verified["orphaned_run_ids"] == sorted(messy.info.orphaned)
    assert verified["runs_checked"] == messy.info.total_runs


def test_rollback_json(messy: Messy) -> None:
    assert messy.cli("run", "--yes", "--no-backup").code == EXIT_FAILED
    result = messy.cli("rollback", "--json", "--yes", "--no-backup", "--batch-size", "10")
    assert result.code == EXIT_OK, result
    report = result.json
    check_shape(report, ROLLBACK, "rollback")
    linked = len(messy.info.work) - len(messy.bad_runs) - 1
    created = linked - len(messy.info.to_link_existing)
    assert (
        report["journal_entries"],
        report["runs_unlinked"],
        report["snapshots_deleted"],
        report["left_alone"],
        report["batches"],
    ) == (linked, linked, created, 0, -(-linked // 10))
    assert report["duration_s"] == round(report["duration_s"], 3) >= 0


def test_upgrade_schema_json(backend: Backend, build_state: Any) -> None:
    build_state(blueprint.PRE_SNAPSHOT_SCHEMA)
    url = backend.cli_url

    dry = main_in_process("upgrade-schema", "--database-url", url, "--json", "--dry-run")
    assert dry.code == EXIT_OK, dry
    check_shape(dry.json, UPGRADE, "upgrade-schema --dry-run")
    assert dry.json["dry_run"] is True and dry.json["already_current"] is False
    assert dry.json["missing"] and all(type(m) is str for m in dry.json["missing"])
    assert dry.json["steps"] and all(type(s) is str for s in dry.json["steps"])
    assert dry.json["steps_executed"] == 0 and dry.json["sql"].strip()

    done = main_in_process(
        "upgrade-schema", "--database-url", url, "--json", "--yes", "--no-backup"
    )
    assert done.code == EXIT_OK, done
    check_shape(done.json, UPGRADE, "upgrade-schema")
    assert done.json["dry_run"] is False and done.json["already_current"] is False
    assert done.json["steps"] == dry.json["steps"]
    assert done.json["steps_executed"] == len(dry.json["steps"])

    again = main_in_process(
        "upgrade-schema", "--database-url", url, "--json", "--yes", "--no-backup"
    )
    assert again.code == EXIT_OK, again
    check_shape(again.json, UPGRADE, "upgrade-schema, up to date")
    assert again.json["already_current"] is True
    assert (again.json["missing"], again.json["steps"], again.json["steps_executed"]) == ([], [], 0)
