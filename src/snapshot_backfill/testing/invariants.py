"""The migrator's invariants, as checks on a state before and after a run.

Each ``check_*`` raises AssertionError with a titled message: what is wrong, then the context
the caller passes as ``where`` (``describe(info, backend)``: state, backend, what it holds),
then the run ids and the expected and found values. Shared by the invariant suites, the
property tests and the plugin's battery.

No test-only dependency: the migrator's commands may use these on a user's database.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, Optional

from sqlalchemy import select
from sqlalchemy.engine import Engine

from snapshot_backfill.backfill import (
    MAX_PROBLEMS_LISTED,
    Plan,
    RollbackReport,
    RunReport,
    VerifyReport,
)
from snapshot_backfill.journal import JOURNAL_TABLE_NAME
from snapshot_backfill.models import (
    ingredients,
    production_runs,
    recipe_ingredients,
    recipe_snapshots,
    recipes,
)
from snapshot_backfill.testing.expectations import StateInfo
from snapshot_backfill.testing.fingerprint import Fingerprint, changed_rows, explain


def _fail(title: str, where: Mapping[str, Any], **details: Any) -> None:
    raise AssertionError(explain(title, {**where, **details}))


def check_plan(plan: Plan, info: StateInfo, where: Mapping[str, Any]) -> None:
    """The plan counts exactly the declared runs, per kind and per recipe."""
    found = {
        "total_runs": plan.total_runs,
        "already_linked": plan.already_linked,
        "to_migrate": plan.to_migrate,
        "to_link_existing": plan.to_link_existing,
        "orphaned_run_ids": list(plan.orphaned_run_ids),
    }
    expected = info.expected_plan()
    if found != expected:
        _fail(
            "the plan does not count what the state holds",
            where,
            **{
                k: f"expected {expected[k]}, planned {found[k]}"
                for k in expected
                if expected[k] != found[k]
            },
        )
    per_recipe = {
        r.recipe_id: {
            "recipe_exists": r.recipe_name is not None,
            "total_runs": r.total_runs,
            "already_linked": r.already_linked,
            "to_migrate": r.to_migrate,
            "to_link_existing": r.to_link_existing,
            "orphaned": r.orphaned,
        }
        for r in plan.per_recipe
    }
    expected_per_recipe = info.expected_per_recipe()
    if per_recipe != expected_per_recipe:
        wrong = sorted(
            set(per_recipe) ^ set(expected_per_recipe)
            | {k for k in per_recipe if per_recipe.get(k) != expected_per_recipe.get(k)}
        )
        _fail(
            "the plan's per-recipe breakdown is wrong",
            where,
            **{
                f"recipe {k}": f"expected {expected_per_recipe.get(k)}, planned {per_recipe.get(k)}"
                for k in wrong[:10]
            },
        )


def check_run_report(report: RunReport, info: StateInfo, where: Mapping[str, Any]) -> None:
    """A complete run reports what the state declares, and no errors."""
    found = (
        report.migrated,
        report.linked_existing,
        report.skipped_orphans,
        report.errors,
        report.interrupted,
    )
    expected: tuple[Any, ...] = (
        len(info.to_migrate),
        len(info.to_link_existing),
        len(info.orphaned),
        [],
        False,
    )
    if found != expected:
        _fail(
            "the run's report does not match the state",
            where,
            expected="migrated, linked_existing, skipped_orphans, errors, interrupted = "
            f"{expected}",
            reported=f"{found}",
        )
    if report.batches != info.batches:
        _fail(
            "the run did not take the expected number of batches",
            where,
            unlinked_runs=len(info.unlinked),
            batch_size=info.batch_size,
            expected=info.batches,
            reported=report.batches,
        )


def _key(run_or_snapshot_id: int) -> tuple[str]:
    return (repr(int(run_or_snapshot_id)),)


def check_writes(
    before: Fingerprint, after: Fingerprint, info: StateInfo, where: Mapping[str, Any]
) -> None:
    """A run writes exactly this and nothing else (raw fingerprints before and after).

    A new snapshot row for each run to migrate and for no other; the runs it links changed in
    ``recipe_snapshot_id`` and ``updated_at`` only; every other table (the application's too)
    untouched but for the journal table the migrator adds.
    """
    for name in sorted(set(before.tables) | set(after.tables)):
        if name in ("production_runs", "recipe_snapshots", JOURNAL_TABLE_NAME):
            continue
        if before.tables.get(name) != after.tables.get(name):
            _fail(
                f"the run changed table {name}, which it must not touch",
                where,
                differences=before.diff(after, tables=[name]),
            )
    snaps = changed_rows(before, after, "recipe_snapshots")
    after_snapshots = after.tables["recipe_snapshots"]
    run_column = after_snapshots.columns.index("production_run_id")
    snapshot_rows = after_snapshots.keyed()
    new_snapshot_runs = sorted(int(snapshot_rows[k][run_column]) for k in snaps["added"])
    if snaps["changed"] or snaps["removed"] or new_snapshot_runs != sorted(info.to_migrate):
        _fail(
            "the run must add one snapshot per run to migrate and change no other snapshot",
            where,
            runs_to_migrate=sorted(info.to_migrate),
            runs_given_a_new_snapshot=new_snapshot_runs,
            snapshots_changed=sorted(k[0] for k in snaps["changed"]),
            snapshots_removed=sorted(k[0] for k in snaps["removed"]),
        )
    runs = changed_rows(before, after, "production_runs")
    changed = sorted(int(k[0]) for k in runs["changed"])
    if runs["added"] or runs["removed"] or changed != list(info.work):
        _fail(
            "the run must link exactly the runs to migrate and to link",
            where,
            expected_linked=list(info.work),
            changed=changed,
            orphans_changed=sorted(set(changed) & set(info.orphaned)),
            already_linked_changed=sorted(set(changed) & set(info.already_linked)),
        )
    table = before.tables["production_runs"]
    rows_before, rows_after = table.keyed(), after.tables["production_runs"].keyed()
    allowed = {"recipe_snapshot_id", "updated_at"}
    for k in sorted(runs["changed"]):
        b = dict(zip(table.columns, rows_before[k]))
        a = dict(zip(after.tables["production_runs"].columns, rows_after[k]))
        bad = {c: f"{b[c]} -> {a[c]}" for c in b if b[c] != a[c] and c not in allowed}
        if bad:
            _fail(f"the run changed more than the link of run {k[0]}", where, **bad)
    journal = after.row_count(JOURNAL_TABLE_NAME)
    if info.work and journal != len(info.work):
        _fail(
            "the journal must hold one entry per link the run made",
            where,
            expected=len(info.work),
            journal_rows=journal,
        )


def expected_payload(engine: Engine, recipe_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The recipe_data and ingredients_data a backfilled snapshot of ``recipe_id`` must hold.

    Straight from ``../shared/spec/schema.md``: the recipe's current row; one object per
    recipe_ingredients row in id order (the application's relationship order), "Unknown" and
    "" for an ingredient row that is missing.
    """
    with engine.connect() as conn:
        r = conn.execute(select(recipes).where(recipes.c.id == recipe_id)).one()
        lines = conn.execute(
            select(recipe_ingredients, ingredients.c.display_name, ingredients.c.slug)
            .select_from(
                recipe_ingredients.outerjoin(
                    ingredients, ingredients.c.id == recipe_ingredients.c.ingredient_id
                )
            )
            .where(recipe_ingredients.c.recipe_id == recipe_id)
            .order_by(recipe_ingredients.c.id)
        ).all()
        conn.rollback()
    recipe_data = {
        "name": r.name,
        "category": r.category,
        "source": r.source,
        "yield_quantity": r.yield_quantity,
        "yield_unit": r.yield_unit,
        "yield_description": r.yield_description,
        "estimated_time_minutes": r.estimated_time_minutes,
        "notes": r.notes,
        "variant_name": r.variant_name,
        "is_production_ready": bool(r.is_production_ready),
    }
    ingredients_data = [
        {
            "ingredient_id": line.ingredient_id,
            "ingredient_name": line.display_name if line.display_name is not None else "Unknown",
            "ingredient_slug": (line.slug or "") if line.display_name is not None else "",
            "quantity": float(line.quantity),
            "unit": line.unit,
            "notes": line.notes,
        }
        for line in lines
    ]
    return recipe_data, ingredients_data


def check_backfilled_content(engine: Engine, info: StateInfo, where: Mapping[str, Any]) -> None:
    """Each run to migrate has one new snapshot: flagged, dated, a uuid4, its recipe's data now."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                recipe_snapshots,
                production_runs.c.produced_at,
                production_runs.c.recipe_snapshot_id.label("run_link"),
                production_runs.c.recipe_id.label("run_recipe"),
            )
            .select_from(
                recipe_snapshots.join(
                    production_runs, production_runs.c.id == recipe_snapshots.c.production_run_id
                )
            )
            .where(recipe_snapshots.c.id.not_in(info.snapshot_ids or [-1]))
            .order_by(recipe_snapshots.c.production_run_id)
        ).all()
        conn.rollback()
    payloads: dict[int, Any] = {}
    for s in rows:
        run = s.production_run_id
        problems = {}
        if s.is_backfilled is not True:
            problems["is_backfilled"] = f"{s.is_backfilled!r}, expected True"
        if s.scale_factor != 1.0:
            problems["scale_factor"] = f"{s.scale_factor!r}, expected 1.0"
        if s.snapshot_date != s.produced_at:
            problems["snapshot_date"] = f"{s.snapshot_date}, expected produced_at {s.produced_at}"
        if not _is_uuid4_text(s.uuid):
            problems["uuid"] = f"{s.uuid!r}, expected a uuid4 as str(uuid.uuid4()) writes it"
        if s.run_link != s.id:
            problems["link"] = f"run {run} links {s.run_link}, expected snapshot {s.id}"
        if s.recipe_id != s.run_recipe or s.recipe_id not in info.recipe_ids:
            problems["recipe_id"] = (
                f"{s.recipe_id}, expected the run's recipe {s.run_recipe} (which must exist)"
            )
        else:
            if s.recipe_id not in payloads:
                payloads[s.recipe_id] = expected_payload(engine, s.recipe_id)
            want_recipe, want_lines = payloads[s.recipe_id]
            got_recipe, got_lines = _loads(s.recipe_data), _loads(s.ingredients_data)
            if got_recipe != want_recipe:
                problems["recipe_data"] = _dict_diff(want_recipe, got_recipe)
            if got_lines != want_lines:
                problems["ingredients_data"] = f"expected {want_lines}\nfound {got_lines}"
        if problems:
            _fail(f"backfilled snapshot {s.id} of run {run} is wrong", where, **problems)


def _is_uuid4_text(text: Any) -> bool:
    """A random (version 4, RFC 4122 variant) uuid, in lower case with hyphens."""
    try:
        value = uuid.UUID(text)
    except (TypeError, ValueError, AttributeError):
        return False
    return value.version == 4 and value.variant == uuid.RFC_4122 and str(value) == text


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        return f"<not JSON: {exc}: {text!r}>"


def _dict_diff(want: Mapping[str, Any], got: Any) -> str:
    if not isinstance(got, Mapping):
        return f"expected {want}, found {got!r}"
    keys = sorted(set(want) | set(got))
    return "; ".join(
        f"{k}: expected {want.get(k, '<absent>')!r}, found {got.get(k, '<absent>')!r}"
        for k in keys
        if want.get(k, "<absent>") != got.get(k, "<absent>")
    )


def check_links_after_run(engine: Engine, info: StateInfo, where: Mapping[str, Any]) -> None:
    """After a run: each run to link points at its existing snapshot; orphans stay unlinked."""
    with engine.connect() as conn:
        link = dict(
            conn.execute(select(production_runs.c.id, production_runs.c.recipe_snapshot_id)).all()
        )
        snapshot_runs = set(conn.execute(select(recipe_snapshots.c.production_run_id)).scalars())
        snapshot_recipes = set(conn.execute(select(recipe_snapshots.c.recipe_id)).scalars())
        conn.rollback()
    wrong = {
        run: (snap, link.get(run))
        for run, snap in info.to_link_existing.items()
        if link.get(run) != snap
    }
    if wrong:
        _fail(
            "runs with an existing snapshot must be linked to it (not to a new one)",
            where,
            **{f"run {r}": f"expected snapshot {s}, linked to {g}" for r, (s, g) in wrong.items()},
        )
    linked_orphans = [r for r in info.orphaned if link.get(r) is not None]
    given = [r for r in info.orphaned if r in snapshot_runs]
    if linked_orphans or given:
        _fail(
            "orphaned runs must never get a snapshot",
            where,
            orphaned_runs=list(info.orphaned),
            linked=linked_orphans,
            with_a_snapshot_row=given,
        )
    preexisting_recipes = _preexisting_snapshot_recipes(engine, info)
    invented = sorted(snapshot_recipes - set(info.recipe_ids) - preexisting_recipes)
    if invented:
        _fail("snapshots of recipes that do not exist were created", where, recipe_ids=invented)


def _preexisting_snapshot_recipes(engine: Engine, info: StateInfo) -> set[int]:
    if not info.snapshot_ids:
        return set()
    with engine.connect() as conn:
        ids = set(
            conn.execute(
                select(recipe_snapshots.c.recipe_id).where(
                    recipe_snapshots.c.id.in_(info.snapshot_ids)
                )
            ).scalars()
        )
        conn.rollback()
    return ids


def check_verify(
    report: VerifyReport,
    info: StateInfo,
    where: Mapping[str, Any],
    *,
    after_run: bool,
    snapshots: Optional[int] = None,
) -> None:
    """Before a run verify flags exactly the runs a run would link; after, nothing."""
    expected_problems = () if after_run else info.verify_problems_before
    flagged = tuple(sorted(p.run_id for p in report.problems if p.run_id is not None))
    listed = min(len(expected_problems), MAX_PROBLEMS_LISTED)  # verify lists the first ones
    if (
        report.problems_total != len(expected_problems)
        or len(flagged) != listed
        or not set(flagged) <= set(expected_problems)
    ):
        _fail(
            f"verify {'after' if after_run else 'before'} the run is wrong",
            where,
            expected_problem_runs=list(expected_problems),
            flagged_runs=list(flagged),
            problems="\n".join(f"{p.kind}: {p.detail}" for p in report.problems[:20]) or "none",
        )
    if report.ok != (not expected_problems):
        _fail("verify's ok disagrees with its problems", where, ok=report.ok)
    if list(report.orphaned_run_ids) != sorted(info.orphaned):
        _fail(
            "verify must report exactly the orphaned runs",
            where,
            expected=sorted(info.orphaned),
            reported=list(report.orphaned_run_ids),
        )
    if report.runs_checked != info.total_runs:
        _fail(
            "verify did not check every run",
            where,
            expected=info.total_runs,
            checked=report.runs_checked,
        )
    if snapshots is not None and report.snapshots_checked != snapshots:
        _fail(
            "verify did not check every snapshot",
            where,
            expected=snapshots,
            checked=report.snapshots_checked,
        )


def check_rollback_report(
    report: RollbackReport, info: StateInfo, where: Mapping[str, Any]
) -> None:
    """Rolling back one complete run undoes every link it made and deletes what it created."""
    found = (
        report.journal_entries,
        report.runs_unlinked,
        report.snapshots_deleted,
        report.left_alone,
    )
    expected = (len(info.work), len(info.work), len(info.to_migrate), 0)
    if found != expected:
        _fail(
            "the rollback report does not match the run it undid",
            where,
            expected=f"journal_entries, runs_unlinked, snapshots_deleted, left_alone = {expected}",
            reported=f"{found}",
        )
