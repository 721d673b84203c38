"""The battery: the migrator's promises, checked on a scratch copy of a real database.

Each check runs the migrator's commands on the copy it is given (never on a source: see
``scratch.scratch_copy``) and returns a ``Finding``: which check, whether it held, what was
seen, and the production run ids involved. ``run_battery`` runs them in this order on one
copy, timing each phase:

1. ``plan_is_pure``: ``plan`` changes no table's digest;
2. ``verify_fails_before``: ``verify`` fails when the plan finds work (passes otherwise);
3. ``run_matches_plan``: ``run`` writes exactly the plan's counts (recipes the plan names as
   impossible to snapshot excepted: their runs are the run's errors);
4. ``verify_passes_after``: ``verify`` passes after the run;
5. ``second_run_writes_nothing``: a second ``run`` links nothing and changes no digest;
6. ``rollback_restores_start``: ``rollback`` returns every table to its starting digest;
7. ``interrupted_run_resumes``: a real ``snapshot-backfill run`` process, killed (SIGKILL;
   terminate where there is none) once a batch is committed, then a resumed run: the plan's
   counts, no run journaled or snapshotted twice.

Each ``check_*`` function is callable on its own; it states what it expects of the copy. No
test-only dependency is imported: the ``rehearse`` command runs this from a base install.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from .. import backfill
from ..database import ENV_VAR, describe_db_error, is_sqlite, read_only, sqlite_path
from ..errors import BackfillError
from ..journal import JOURNAL_TABLE_NAME
from ..models import production_runs, recipe_snapshots, recipes
from .digest import TableDigest, changed_tables, table_digests
from .scratch import MARKER_TABLE

CHECKS = (
    "plan_is_pure",
    "verify_fails_before",
    "run_matches_plan",
    "verify_passes_after",
    "second_run_writes_nothing",
    "rollback_restores_start",
    "interrupted_run_resumes",
)
# At most this many run ids in a finding (the detail says how many there were).
MAX_RUN_IDS = 50
# The interrupted run works in about this many batches, so that it is killed mid-way.
INTERRUPTED_BATCHES = 10
CHILD_TIMEOUT_S = 3600.0
_POLL_S = 0.002
WRITTEN_TABLES = (production_runs.name, recipe_snapshots.name, JOURNAL_TABLE_NAME)

Digests = Mapping[str, TableDigest]


@dataclass(frozen=True)
class Finding:
    """One check's outcome: ``run_ids`` are the production runs it concerns (at most 50)."""

    check: str
    ok: bool
    detail: str
    run_ids: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "ok": self.ok,
            "detail": self.detail,
            "run_ids": list(self.run_ids),
        }


@dataclass
class BatteryResult:
    """Every finding, the time each phase took, and what the plan and the run reported."""

    findings: list[Finding] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    plan: Optional[backfill.Plan] = None
    run: Optional[backfill.RunReport] = None

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def failed(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]


# --- helpers --------------------------------------------------------------------------------


def data_tables(engine: Engine) -> list[str]:
    """The copy's tables, less the scratch marker."""
    with engine.connect() as conn:
        return sorted(t for t in sa.inspect(conn).get_table_names() if t != MARKER_TABLE)


def digests(engine: Engine, tables: Optional[Sequence[str]] = None) -> dict[str, TableDigest]:
    """The digest of each table of the copy (of ``tables`` among them, if given)."""
    present = data_tables(engine)
    wanted = present if tables is None else [t for t in present if t in tables]
    return table_digests(engine, wanted)


def expected_counts(plan: backfill.Plan) -> dict[str, int]:
    """What a run should write after this plan: its counts, less the impossible recipes' runs."""
    failing = sum(e.runs for e in plan.recipe_errors)
    return {
        "migrated": plan.to_migrate - failing,
        "linked_existing": plan.to_link_existing,
        "skipped_orphans": plan.orphaned,
        "skipped_undated": plan.undated,
        "errors": failing,
    }


def _ids(ids: Sequence[Optional[int]]) -> tuple[int, ...]:
    unique = sorted({int(i) for i in ids if i is not None})
    return tuple(unique[:MAX_RUN_IDS])


def _count_text(count: int) -> str:
    return f"{count} runs" + (f" (first {MAX_RUN_IDS} listed)" if count > MAX_RUN_IDS else "")


def unlinked_work(engine: Engine, plan: Optional[backfill.Plan] = None) -> tuple[int, list[int]]:
    """Runs a run should have linked and has not (unlinked, recipe present, dated).

    Returns how many, and the first ``MAX_RUN_IDS`` of them by id (memory flat).
    """
    failing = [e.recipe_id for e in plan.recipe_errors] if plan is not None else []
    runs = production_runs
    query = (
        sa.select(runs.c.id)
        .select_from(runs.join(recipes, recipes.c.id == runs.c.recipe_id))
        .where(runs.c.recipe_snapshot_id.is_(None), runs.c.produced_at.is_not(None))
        .order_by(runs.c.id)
    )
    if failing:
        query = query.where(runs.c.recipe_id.not_in(failing))
    with read_only(engine) as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar()
        first = list(conn.execute(query.limit(MAX_RUN_IDS)).scalars())
    return int(count or 0), first


@contextmanager
def _timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        timings[phase] = timings.get(phase, 0.0) + time.monotonic() - started


def _compare_run(check: str, report: backfill.RunReport, plan: backfill.Plan) -> Finding:
    expected = expected_counts(plan)
    found = {
        "migrated": report.migrated,
        "linked_existing": report.linked_existing,
        "skipped_orphans": report.skipped_orphans,
        "skipped_undated": report.skipped_undated,
        "errors": len(report.errors),
    }
    failing_recipes = {e.recipe_id for e in plan.recipe_errors}
    unexpected = [e for e in report.errors if e.recipe_id not in failing_recipes]
    if found == expected and not unexpected:
        counts = ", ".join(f"{key} {value}" for key, value in found.items())
        return Finding(check, True, f"wrote the plan's counts: {counts}")
    differences = ", ".join(
        f"{key} {found[key]} (plan: {expected[key]})"
        for key in found
        if found[key] != expected[key]
    )
    detail = f"the run wrote other counts than the plan: {differences or 'same counts'}"
    if unexpected:
        detail += f"; {len(unexpected)} runs failed: {unexpected[0].error}"
    return Finding(check, False, detail, _ids([e.run_id for e in unexpected]))


# --- the checks -----------------------------------------------------------------------------


def check_plan_is_pure(engine: Engine, before: Optional[Digests] = None) -> Finding:
    """``plan`` leaves every table's digest as it was (any copy)."""
    before = before if before is not None else digests(engine)
    backfill.plan(engine)
    changed = changed_tables(before, digests(engine))
    if changed:
        return Finding("plan_is_pure", False, f"plan changed tables: {', '.join(changed)}")
    return Finding("plan_is_pure", True, f"{len(before)} tables unchanged by plan")


def check_verify_fails_before(engine: Engine, plan: Optional[backfill.Plan] = None) -> Finding:
    """``verify`` fails when there is work to do, passes when there is none (before a run)."""
    plan = plan if plan is not None else backfill.plan(engine)
    report = backfill.verify(engine)
    if plan.work and report.ok:
        return Finding(
            "verify_fails_before",
            False,
            f"verify passed although {plan.work} runs are to be linked",
            _ids(unlinked_work(engine, plan)[1]),
        )
    if plan.work:
        return Finding(
            "verify_fails_before", True, f"verify found {report.problems_total} problems"
        )
    return Finding("verify_fails_before", True, "nothing to do: verify not expected to fail")


def check_run_matches_plan(
    engine: Engine, *, batch_size: int = backfill.DEFAULT_BATCH_SIZE
) -> Finding:
    """``run`` writes what ``plan`` counted (a copy before its run)."""
    return _run_matches_plan(engine, backfill.plan(engine), batch_size)[0]


def _run_matches_plan(
    engine: Engine, plan: backfill.Plan, batch_size: int
) -> tuple[Finding, Optional[backfill.RunReport]]:
    check = "run_matches_plan"
    try:
        report = backfill.run(engine, batch_size=batch_size)
    except (BackfillError, DBAPIError) as exc:
        message = describe_db_error(exc) if isinstance(exc, DBAPIError) else str(exc)
        count, left = unlinked_work(engine, plan)
        return (
            Finding(
                check,
                False,
                f"run stopped: {message}; {_count_text(count)} left unlinked",
                _ids(left),
            ),
            None,
        )
    return _compare_run(check, report, plan), report


def check_verify_passes_after(engine: Engine) -> Finding:
    """``verify`` passes (a copy after its run)."""
    report = backfill.verify(engine)
    if report.ok:
        return Finding("verify_passes_after", True, f"{report.runs_checked} runs verified")
    kinds = sorted({p.kind for p in report.problems})
    return Finding(
        "verify_passes_after",
        False,
        f"verify found {report.problems_total} problems ({', '.join(kinds)}): "
        f"{report.problems[0].detail}",
        _ids([p.run_id for p in report.problems]),
    )


def check_second_run_writes_nothing(
    engine: Engine, *, batch_size: int = backfill.DEFAULT_BATCH_SIZE
) -> Finding:
    """A second ``run`` links nothing and changes no table (a copy after its run)."""
    check = "second_run_writes_nothing"
    before = digests(engine, WRITTEN_TABLES)
    try:
        report = backfill.run(engine, batch_size=batch_size)
    except (BackfillError, DBAPIError) as exc:
        message = describe_db_error(exc) if isinstance(exc, DBAPIError) else str(exc)
        return Finding(check, False, f"the second run stopped: {message}")
    changed = changed_tables(before, digests(engine, WRITTEN_TABLES))
    if report.migrated or report.linked_existing or changed:
        return Finding(
            check,
            False,
            f"the second run migrated {report.migrated}, linked {report.linked_existing}, "
            f"changed tables: {', '.join(changed) or 'none'}",
            _ids(unlinked_work(engine)[1]),
        )
    return Finding(check, True, "nothing written")


def check_rollback_restores_start(engine: Engine, start: Digests) -> Finding:
    """``rollback`` returns every table to ``start``, the digests taken before the first run."""
    check = "rollback_restores_start"
    try:
        backfill.rollback(engine, batch_size=backfill.DEFAULT_BATCH_SIZE)
    except (BackfillError, DBAPIError) as exc:
        message = describe_db_error(exc) if isinstance(exc, DBAPIError) else str(exc)
        return Finding(check, False, f"rollback stopped: {message}")
    changed = changed_tables(start, digests(engine))
    if not changed:
        return Finding(check, True, f"{len(start)} tables as they started")
    ids: list[int] = []
    if production_runs.name in changed:
        with read_only(engine) as conn:
            ids = list(
                conn.execute(
                    sa.select(production_runs.c.id)
                    .where(production_runs.c.recipe_snapshot_id.is_not(None))
                    .order_by(production_runs.c.id)
                    .limit(MAX_RUN_IDS)
                ).scalars()
            )
    return Finding(
        check,
        False,
        f"after rollback these tables differ from the start: {', '.join(changed)}",
        _ids(ids),
    )


def check_interrupted_run_resumes(
    engine: Engine,
    *,
    batch_size: int = backfill.DEFAULT_BATCH_SIZE,
    plan: Optional[backfill.Plan] = None,
    timings: Optional[dict[str, float]] = None,
) -> Finding:
    """A ``run`` process killed after a committed batch, then resumed, ends as the plan said.

    Expects a copy with nothing journaled yet (before any run, or after a rollback).
    """
    check = "interrupted_run_resumes"
    timings = timings if timings is not None else {}
    plan = plan if plan is not None else backfill.plan(engine)
    if not plan.work:
        return Finding(check, True, "nothing to do: no run to interrupt")
    already = _journaled(engine)
    if already:
        return Finding(
            check,
            False,
            f"cannot start: the copy already journals {already} links (not rolled back)",
            _ids(_journaled_runs(engine)),
        )
    snapshots_before = _count(engine, recipe_snapshots.name)
    child_batch = max(1, min(batch_size, plan.work // INTERRUPTED_BATCHES))
    with _timed(timings, "interrupted_run"):
        killed_after = _run_and_kill(engine, child_batch)
    with _timed(timings, "resume"):
        try:
            backfill.run(engine, batch_size=batch_size)
        except (BackfillError, DBAPIError) as exc:
            message = describe_db_error(exc) if isinstance(exc, DBAPIError) else str(exc)
            _, left = unlinked_work(engine, plan)
            return Finding(check, False, f"the resumed run stopped: {message}", _ids(left))
    expected = expected_counts(plan)
    with read_only(engine) as conn:
        journal = sa.table(
            JOURNAL_TABLE_NAME, sa.column("production_run_id"), sa.column("created_snapshot")
        )
        created = linked = 0
        twice: list[int] = []
        if sa.inspect(conn).has_table(JOURNAL_TABLE_NAME):
            for row in conn.execute(
                sa.select(journal.c.created_snapshot, sa.func.count()).group_by(
                    journal.c.created_snapshot
                )
            ):
                if row[0]:
                    created += int(row[1])
                else:
                    linked += int(row[1])
            twice = list(
                conn.execute(
                    sa.select(journal.c.production_run_id)
                    .group_by(journal.c.production_run_id)
                    .having(sa.func.count() > 1)
                    .limit(MAX_RUN_IDS)
                ).scalars()
            )
        snaps = recipe_snapshots
        twice += list(
            conn.execute(
                sa.select(snaps.c.production_run_id)
                .group_by(snaps.c.production_run_id)
                .having(sa.func.count() > 1)
                .limit(MAX_RUN_IDS)
            ).scalars()
        )
    snapshots_after = _count(engine, recipe_snapshots.name)
    problems = []
    if twice:
        problems.append(f"{_count_text(len(twice))} journaled or snapshotted twice")
    if created != expected["migrated"] or snapshots_after - snapshots_before != created:
        problems.append(
            f"{created} snapshots journaled, {snapshots_after - snapshots_before} created "
            f"(plan: {expected['migrated']})"
        )
    if linked != expected["linked_existing"]:
        problems.append(f"{linked} existing snapshots linked (plan: {expected['linked_existing']})")
    how = (
        f"killed after {killed_after} of {plan.work} runs were linked"
        if killed_after is not None
        else "the run finished before it could be killed"
    )
    if problems:
        _, left = unlinked_work(engine, plan)
        return Finding(
            check, False, f"{how}, then resumed: {'; '.join(problems)}", _ids(twice + left)
        )
    return Finding(check, True, f"{how}, then resumed: the plan's counts, nothing twice")


def _count(engine: Engine, table: str) -> int:
    with read_only(engine) as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar_one()
        )


def _journaled(engine: Engine) -> int:
    """Rows in the journal (0 while it does not exist), read in a transaction of its own."""
    try:
        with engine.connect() as conn:
            found = conn.exec_driver_sql(f"SELECT count(*) FROM {JOURNAL_TABLE_NAME}").scalar_one()
            conn.rollback()
            return int(found)
    except DBAPIError:
        return 0


def _journaled_runs(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        found = conn.exec_driver_sql(
            f"SELECT production_run_id FROM {JOURNAL_TABLE_NAME} ORDER BY production_run_id "
            f"LIMIT {MAX_RUN_IDS}"
        ).scalars()
        return list(found)


def _child_url(engine: Engine) -> str:
    if is_sqlite(engine):
        path = sqlite_path(engine.url)
        assert path is not None  # a scratch copy is a file
        return str(path)
    return engine.url.render_as_string(hide_password=False)


def _run_and_kill(engine: Engine, batch_size: int) -> Optional[int]:
    """Start ``snapshot-backfill run`` on the copy, kill it once a batch is committed.

    Returns how many runs were journaled when it was killed, or None if it finished first.
    The URL goes through the environment, not the command line (where ``ps`` shows it).
    """
    env = {**os.environ, ENV_VAR: _child_url(engine)}
    command = [sys.executable, "-m", "snapshot_backfill", "run", "--yes", "--quiet"]
    # The batch size as given, not adapted: the kill must land between committed batches.
    command += ["--batch-size", str(batch_size), "--max-batch-seconds", "0", "--min-age", "0"]
    # A scratch copy needs no backup; on a server the run refuses to write without saying so.
    command.append("--no-backup" if is_sqlite(engine) else "--backup-taken")
    child = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    try:
        while child.poll() is None and time.monotonic() < deadline:
            journaled = _journaled(engine)
            if journaled:
                _kill(child)
                child.wait()
                return _journaled(engine)
            time.sleep(_POLL_S)
        return None
    finally:
        if child.poll() is None:
            _kill(child)
        child.wait()
        if child.stderr is not None:
            child.stderr.close()


def _kill(child: subprocess.Popen[bytes]) -> None:
    if hasattr(signal, "SIGKILL"):
        child.send_signal(signal.SIGKILL)
    else:  # pragma: no cover - Windows: no SIGKILL; terminate is its hard stop
        child.terminate()


# --- the whole battery ------------------------------------------------------------------------


def run_battery(
    engine: Engine,
    *,
    batch_size: int = backfill.DEFAULT_BATCH_SIZE,
    on_check: Optional[Callable[[Finding], None]] = None,
) -> BatteryResult:
    """Run every check in order on ``engine``'s copy; collect the findings and phase timings."""
    result = BatteryResult()
    timings = result.timings

    def record(finding: Finding) -> None:
        result.findings.append(finding)
        if on_check is not None:
            on_check(finding)

    with _timed(timings, "digest"):
        start = digests(engine)
    with _timed(timings, "plan"):
        result.plan = plan = backfill.plan(engine)
    with _timed(timings, "digest"):
        after_plan = digests(engine)
    changed = changed_tables(start, after_plan)
    record(
        Finding("plan_is_pure", not changed, f"plan changed tables: {', '.join(changed)}")
        if changed
        else Finding("plan_is_pure", True, f"{len(start)} tables unchanged by plan")
    )
    with _timed(timings, "verify_before"):
        record(check_verify_fails_before(engine, plan))
    with _timed(timings, "run"):
        finding, result.run = _run_matches_plan(engine, plan, batch_size)
    record(finding)
    with _timed(timings, "verify_after"):
        record(check_verify_passes_after(engine))
    with _timed(timings, "second_run"):
        record(check_second_run_writes_nothing(engine, batch_size=batch_size))
    with _timed(timings, "rollback"):
        record(check_rollback_restores_start(engine, start))
    record(check_interrupted_run_resumes(engine, batch_size=batch_size, plan=plan, timings=timings))
    return result
