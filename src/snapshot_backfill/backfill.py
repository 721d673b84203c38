"""The migrator: plan, run, verify and rollback the backfill of recipe snapshots.

Each command takes an engine and options and returns a report; nothing here prints. The
classification of a production run that has no snapshot link is, in this order:

- ``to_link_existing``: a ``recipe_snapshots`` row for the run already exists (an interrupted
  writer); the run is linked to it, never given a second one (``production_run_id`` is UNIQUE);
- ``to_migrate``: its recipe exists; it gets a snapshot of the recipe's current data;
- ``orphaned``: its recipe is gone; it is skipped and reported, never invented;
- ``undated``: its recipe exists but its ``produced_at`` is NULL (a schema relaxed by hand):
  it has no date for ``snapshot_date``, so it is skipped and reported, never given one.

A recipe whose snapshot cannot be built (a quantity that is not a finite number) or stored (its
JSON exceeds the column, e.g. MariaDB's TEXT) is listed in the plan's ``recipe_errors``; a run
reports each of its runs as an error naming the recipe, and links every other run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Optional

from sqlalchemy import (
    String,
    and_,
    any_,
    case,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from .database import (
    describe_db_error,
    read_only,
    refresh_statistics,
    require_writable,
    write_transaction,
)
from .errors import BadInputError, InterruptedRunError, RunAbortedError
from .journal import create_journal, drop_journal, journal, journal_exists
from .locking import DEFAULT_LOCK_TIMEOUT_S, migration_lock
from .models import new_uuid, production_runs, recipe_snapshots, recipes, utc_now
from .pacing import MAX_BATCH_SIZE, BatchSizer
from .payload import (
    build_payloads,
    column_capacity,
    create_payload_table,
    drop_payload_table,
    payload_table,
    store_payloads,
)
from .schema_check import require_schema

# 5,000 rows a batch: each commit writes the index pages the batch touched, and the random
# uuid index makes that most of its leaves, so fewer, larger batches write less (SQLite at 100k
# runs: CPU 5.7 s at 2,000, 4.8 s at 5,000, 4.55 s at 10,000; see benchmarks/README.md). 5,000
# keeps each write transaction, and so SQLite's write lock, to about half a second at 100k runs
# (about a second at 1M), well inside the application's 5 s busy timeout.
DEFAULT_BATCH_SIZE = 5000
# verify lists at most this many problems (it still counts them all).
MAX_PROBLEMS_LISTED = 1000

runs = production_runs
snaps = recipe_snapshots
# What the next plan's estimates hang on, refreshed after a run or rollback that wrote: how
# many runs are still unlinked.
PLAN_STATISTICS = (production_runs.name, (production_runs.c.recipe_snapshot_id.name,))


@dataclass
class RecipeBreakdown:
    """The runs of one recipe id, by what the backfill does with them."""

    recipe_id: int
    recipe_name: Optional[str]
    total_runs: int
    already_linked: int
    to_migrate: int
    to_link_existing: int
    orphaned: int
    undated: int = 0


@dataclass
class RecipeError:
    """A recipe whose snapshot cannot be built or stored: its runs to migrate will fail."""

    recipe_id: int
    runs: int
    error: str


@dataclass
class Plan:
    """What a run would do: every production run falls in exactly one of the five counts.

    ``to_migrate`` includes the runs of the recipes in ``recipe_errors``, which a run will
    report as errors.
    """

    total_runs: int
    already_linked: int
    to_migrate: int
    to_link_existing: int
    orphaned_run_ids: list[int]
    per_recipe: list[RecipeBreakdown] = field(default_factory=list)
    undated_run_ids: list[int] = field(default_factory=list)
    recipe_errors: list[RecipeError] = field(default_factory=list)
    # The highest run id when planned: a run takes no run above it (they came after the plan).
    max_run_id: Optional[int] = None

    @property
    def orphaned(self) -> int:
        return len(self.orphaned_run_ids)

    @property
    def undated(self) -> int:
        return len(self.undated_run_ids)

    @property
    def work(self) -> int:
        """How many runs a run would link (to a new or an existing snapshot)."""
        return self.to_migrate + self.to_link_existing

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_runs": self.total_runs,
            "already_linked": self.already_linked,
            "to_migrate": self.to_migrate,
            "to_link_existing": self.to_link_existing,
            "orphaned": self.orphaned,
            "orphaned_run_ids": list(self.orphaned_run_ids),
            "undated": self.undated,
            "undated_run_ids": list(self.undated_run_ids),
            "recipe_errors": [asdict(e) for e in self.recipe_errors],
            "per_recipe": [asdict(r) for r in self.per_recipe],
            "max_run_id": self.max_run_id,
        }


@dataclass
class RunError:
    """A production run the migrator could not link, and why (and its recipe, if the cause)."""

    run_id: int
    error: str
    recipe_id: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        """``run_id``, ``error``, and ``recipe_id`` when the recipe is the cause."""
        document: dict[str, Any] = {"run_id": self.run_id, "error": self.error}
        if self.recipe_id is not None:
            document["recipe_id"] = self.recipe_id
        return document


@dataclass
class Progress:
    """Where a run or rollback stands after a committed batch."""

    done: int
    total: int
    batches: int
    # Seconds since the first batch began: the rate and ETA exclude planning and the question.
    elapsed_s: float = 0.0


@dataclass
class RunReport:
    """What a run did; ``plan`` is what it found when it started."""

    plan: Plan
    run_token: str
    migrated: int = 0
    linked_existing: int = 0
    skipped_orphans: int = 0
    skipped_undated: int = 0
    errors: list[RunError] = field(default_factory=list)
    batches: int = 0
    duration_s: float = 0.0
    interrupted: bool = False
    # Runs left to the application: younger than min_age, or added after the plan.
    too_recent: int = 0
    # The longest batch's write transaction, the longest the application waited on us.
    longest_batch_s: float = 0.0
    # The pause between batches, the application's turn.
    pause_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Nothing failed and nothing is left that verify would flag (undated runs are)."""
        return not self.errors and not self.interrupted and not self.skipped_undated

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.plan.to_dict(),
            "migrated": self.migrated,
            "linked_existing": self.linked_existing,
            "skipped_orphans": self.skipped_orphans,
            "skipped_undated": self.skipped_undated,
            "errors": [e.to_dict() for e in self.errors],
            "batches": self.batches,
            "duration_s": round(self.duration_s, 3),
            "interrupted": self.interrupted,
            "too_recent": self.too_recent,
            "longest_batch_s": round(self.longest_batch_s, 3),
            "pause_s": self.pause_s,
            "run_token": self.run_token,
        }


@dataclass
class Problem:
    """One discrepancy ``verify`` found."""

    kind: str
    detail: str
    run_id: Optional[int] = None
    snapshot_id: Optional[int] = None


@dataclass
class VerifyReport:
    """The outcome of ``verify``: ``ok`` only when no problem was found."""

    runs_checked: int
    snapshots_checked: int
    orphaned_run_ids: list[int]
    problems: list[Problem]
    problems_total: int

    @property
    def ok(self) -> bool:
        return self.problems_total == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "runs_checked": self.runs_checked,
            "snapshots_checked": self.snapshots_checked,
            "orphaned_run_ids": list(self.orphaned_run_ids),
            "problems_total": self.problems_total,
            "problems": [asdict(p) for p in self.problems],
        }


@dataclass
class RollbackReport:
    """What ``rollback`` undid."""

    journal_entries: int = 0
    runs_unlinked: int = 0
    snapshots_deleted: int = 0
    left_alone: int = 0
    batches: int = 0
    duration_s: float = 0.0
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "duration_s": round(self.duration_s, 3)}


ProgressCallback = Callable[[Progress], None]


# --- plan --------------------------------------------------------------------------------


def _unlinked_runs_joined() -> Any:
    """production_runs, with the run's own snapshot row (if any) and its recipe (if any)."""
    return runs.outerjoin(snaps, snaps.c.production_run_id == runs.c.id).outerjoin(
        recipes, recipes.c.id == runs.c.recipe_id
    )


def _plan(conn: Connection) -> Plan:
    # Two narrow queries instead of one GROUP BY over every run joined to its snapshot and
    # recipe (5.9 s at 1M runs on SQLite; see benchmarks/README.md): the totals come from the
    # covering index on production_runs.recipe_id, the recipes joined once per group; the
    # classification only visits the unlinked runs (index on recipe_snapshot_id, then the
    # UNIQUE index on recipe_snapshots.production_run_id), once: grouped per recipe, and per
    # run for the recipes that are gone, so that the orphans are listed by the same pass.
    totals = select(runs.c.recipe_id, func.count().label("total_runs")).group_by(runs.c.recipe_id)
    totals_q = totals.subquery()
    groups = conn.execute(
        select(
            totals_q.c.recipe_id,
            recipes.c.name,
            recipes.c.id.label("recipe_found"),
            totals_q.c.total_runs,
        )
        .select_from(totals_q.outerjoin(recipes, recipes.c.id == totals_q.c.recipe_id))
        .order_by(totals_q.c.recipe_id)
    ).all()
    gone = [g.recipe_id for g in groups if g.recipe_found is None]
    gone_set = set(gone)
    # Listing the orphans in a second query read them twice; on MariaDB, whose buffer pool
    # may be smaller than production_runs, that was a second read of the table from disk
    # (1.7 s of a 3.3 s no-op run at 1M runs). The undated runs (produced_at NULL, only in a
    # schema relaxed by hand) are listed by the same pass.
    whens: list[Any] = [(runs.c.produced_at.is_(None), runs.c.id)]
    if gone:
        whens.insert(0, (runs.c.recipe_id.in_(gone), runs.c.id))
    listed_run = case(*whens).label("listed_run")  # NULL for every other run
    unlinked: dict[int, list[int]] = {}
    orphaned_ids: list[int] = []
    undated_ids: list[int] = []
    undated_per_recipe: dict[int, int] = {}
    for row in conn.execute(
        select(
            runs.c.recipe_id,
            listed_run,
            func.count().label("unlinked"),
            func.count(snaps.c.id).label("with_snapshot"),
        )
        .select_from(runs.outerjoin(snaps, snaps.c.production_run_id == runs.c.id))
        .where(runs.c.recipe_snapshot_id.is_(None))
        .group_by(runs.c.recipe_id, listed_run)
    ):
        counts = unlinked.setdefault(row.recipe_id, [0, 0])
        counts[0] += row.unlinked
        counts[1] += row.with_snapshot
        if row.listed_run is not None and not row.with_snapshot:
            if row.recipe_id in gone_set:
                orphaned_ids.append(row.listed_run)
            else:
                undated_ids.append(row.listed_run)
                undated_per_recipe[row.recipe_id] = undated_per_recipe.get(row.recipe_id, 0) + 1
    per_recipe: list[RecipeBreakdown] = []
    for g in groups:
        unlinked_runs, with_snapshot = unlinked.get(g.recipe_id, (0, 0))
        without_snapshot = unlinked_runs - with_snapshot
        found = g.recipe_found is not None
        undated = undated_per_recipe.get(g.recipe_id, 0)
        per_recipe.append(
            RecipeBreakdown(
                recipe_id=g.recipe_id,
                recipe_name=g.name,
                total_runs=int(g.total_runs),
                already_linked=int(g.total_runs) - unlinked_runs,
                to_migrate=without_snapshot - undated if found else 0,
                to_link_existing=with_snapshot,
                orphaned=0 if found else without_snapshot,
                undated=undated,
            )
        )
    # Each recipe's payload is built once here too (a few ms per thousand recipes), so the
    # plan names the recipes whose runs a run would fail, before anything is written.
    migrating = {r.recipe_id: r.to_migrate for r in per_recipe if r.to_migrate}
    failures = build_payloads(conn, migrating, column_capacity(conn)).failures if migrating else {}
    return Plan(
        max_run_id=conn.execute(select(func.max(runs.c.id))).scalar(),
        total_runs=sum(r.total_runs for r in per_recipe),
        already_linked=sum(r.already_linked for r in per_recipe),
        to_migrate=sum(r.to_migrate for r in per_recipe),
        to_link_existing=sum(r.to_link_existing for r in per_recipe),
        orphaned_run_ids=sorted(orphaned_ids),
        per_recipe=per_recipe,
        undated_run_ids=sorted(undated_ids),
        recipe_errors=[
            RecipeError(recipe_id, migrating[recipe_id], reason)
            for recipe_id, reason in sorted(failures.items())
        ],
    )


def plan(engine: Engine) -> Plan:
    """Count what a run would do, in a transaction the database keeps read-only."""
    with read_only(engine) as conn:
        require_schema(conn)
        return _plan(conn)


# --- run ---------------------------------------------------------------------------------


def _check_batch_size(batch_size: int) -> None:
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise BadInputError(
            f"--batch-size must be between 1 and {MAX_BATCH_SIZE}, not {batch_size}"
        )


class _Batch:
    """One batch of unlinked runs, sorted by what the backfill does with each."""

    def __init__(self, rows: Sequence[Any]) -> None:
        self.last_id: int = rows[-1].id
        self.rows = len(rows)
        self.link: list[Any] = []
        self.migrate: list[Any] = []
        # One pass: a Row's attribute lookup is not free (three passes were ~4% of a run).
        # The others (recipe gone, or no produced_at) a run leaves: the plan lists them.
        for r in rows:
            if r.snapshot_id is not None:
                self.link.append(r)
            elif r.recipe_found is not None and not r.undated:
                self.migrate.append(r)


@dataclass(frozen=True)
class _Bounds:
    """Which runs a run may take: up to the plan's highest id, created before ``cutoff``."""

    upto: Optional[int]
    cutoff: Optional[datetime]

    def clauses(self) -> list[Any]:
        found: list[Any] = []
        if self.upto is not None:
            found.append(runs.c.id <= self.upto)
        if self.cutoff is not None:
            found.append(runs.c.created_at <= self.cutoff)
        return found


def _next_batch(conn: Connection, after: int, size: int, bounds: _Bounds) -> Optional[_Batch]:
    # Keyset pagination: "id > after ORDER BY id LIMIT size" seeks straight to the batch
    # through the index on recipe_snapshot_id (whose entries are in id order within NULL).
    # The snapshot side gets the bound too: PostgreSQL merge-joins recipe_snapshots by
    # production_run_id and, not inferring "> after" for it, read the snapshots of every
    # earlier batch again (217 ms instead of 18 ms a batch at 100k runs; quadratic in N).
    # For speed alone ("runs.c.id > after" already decides which snapshots join): dropped,
    # or made ">=", the same rows come back, so only benchmarks/ can tell.
    speed_bound = snaps.c.production_run_id > after  # pragma: no mutate
    own_snapshot = (snaps.c.production_run_id == runs.c.id) & speed_bound
    query = (
        select(
            runs.c.id,
            runs.c.recipe_id,
            snaps.c.id.label("snapshot_id"),
            recipes.c.id.label("recipe_found"),
            runs.c.produced_at.is_(None).label("undated"),
        )
        .select_from(
            runs.outerjoin(snaps, own_snapshot).outerjoin(recipes, recipes.c.id == runs.c.recipe_id)
        )
        .order_by(runs.c.id)
    )
    taken = [runs.c.recipe_snapshot_id.is_(None), runs.c.id > after]
    taken += bounds.clauses()
    backend = conn.dialect.name
    if backend in ("mysql", "mariadb"):
        # MariaDB has no FOR UPDATE OF: a locking read of the join would lock the recipe
        # rows too (a recipe rename waited for the batch). Lock the batch's runs alone, by
        # primary key, then read the join without locks.
        lowest_first = (
            select(runs.c.id)
            .where(*taken)
            # InnoDB reads these rows through the primary key or the index on
            # recipe_snapshot_id, both in id order within NULL: without the ORDER BY the same
            # ids come back, so no test can tell them apart. Kept: it is LIMIT's meaning.
            .order_by(runs.c.id)  # pragma: no mutate
            .limit(size)
            .with_for_update()
        )
        ids = list(conn.execute(lowest_first).scalars())
        if not ids:
            return None
        # The batch's first read locked them, unlinked; the join's snapshot is taken after it.
        query = query.where(runs.c.id.in_(ids))
    else:
        query = query.where(*taken).limit(size)
        if backend == "postgresql":
            # Hold the batch's runs until commit: the application may be writing meanwhile.
            query = query.with_for_update(of=runs)
    rows = conn.execute(query).all()
    return _Batch(rows) if rows else None


# uuid4 text made by the database, so that creating a batch's snapshots needs no parameter
# per row: random bits with the version nibble 4 and the variant 8, 9, a or b, lower case,
# as str(uuid.uuid4()) writes it. PostgreSQL has gen_random_uuid() (13+); SQLite and
# MariaDB/MySQL (RANDOM_BYTES: MariaDB 10.10+, MySQL 5.6+) assemble it from random bytes.
_SQLITE_UUID4 = (
    "lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || "
    "substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + (random() & 3), 1) || "
    "substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))"
)
_MYSQL_UUID4 = (
    "LOWER(CONCAT(HEX(RANDOM_BYTES(4)), '-', HEX(RANDOM_BYTES(2)), '-4', "
    "SUBSTR(HEX(RANDOM_BYTES(2)), 2), '-', ELT(1 + FLOOR(RAND() * 4), '8', '9', 'a', 'b'), "
    "SUBSTR(HEX(RANDOM_BYTES(2)), 2), '-', HEX(RANDOM_BYTES(6))))"
)


def _uuid4_sql(conn: Connection) -> Any:
    backend = conn.dialect.name
    if backend == "postgresql":
        return cast(func.gen_random_uuid(), String)
    # No type: the text goes straight into an INSERT ... SELECT, where nothing reads it back.
    return literal_column(_SQLITE_UUID4 if backend == "sqlite" else _MYSQL_UUID4)


def _among(conn: Connection, column: Any, ids: Sequence[int]) -> Any:
    """``column IN ids``, bound as one parameter where the backend takes a list as one value.

    SQLAlchemy binds an IN list as one parameter per id (~2 us each to expand) and the server
    parses each; at 2,000 runs a batch, three such lists cost ~10 ms a batch on SQLite and
    ~40 ms on PostgreSQL (benchmarks/README.md). PostgreSQL takes an array (= ANY), SQLite a
    JSON array (json_each, whose rows it probes by rowid); MariaDB/MySQL keep the list, which
    they turn into a join themselves.
    """
    backend = conn.dialect.name
    if backend == "postgresql":
        # No type: psycopg binds a list of ints as an integer array (an empty one too).
        return column == any_(literal(list(ids)))
    if backend == "sqlite":
        values = func.json_each(json.dumps(list(ids))).table_valued("value")
        return column.in_(select(values.c.value))
    return column.in_(ids)


def _link(
    conn: Connection,
    link_rows: Sequence[Any],
    migrate_rows: Sequence[Any],
    token: str,
    now: datetime,
) -> None:
    """Create the snapshots of ``migrate_rows``, journal and link every run.

    Raises RunAbortedError if the database wrote other counts than the batch asked for (a
    writer that does not honour the batch's locks): the caller rolls the batch back.
    """
    created_ids = [r.id for r in migrate_rows]
    if created_ids:
        # One INSERT ... SELECT per batch: the payloads come from the run's temporary payload
        # table, snapshot_date is copied from produced_at in SQL (byte for byte, as the journal
        # copies updated_at). Before, an executemany bound 10 parameters per snapshot (two of
        # them its recipe's JSON): ~3 s of Python per 100k runs, and on the servers every
        # snapshot's JSON crossed the wire (see benchmarks/README.md).
        # The literals' types are SQLAlchemy's for their Python values (DateTime, Double, Boolean).
        now_value = literal(now)
        created = conn.execute(
            insert(snaps)
            .from_select(
                [
                    "uuid",
                    "created_at",
                    "updated_at",
                    "recipe_id",
                    "production_run_id",
                    "scale_factor",
                    "snapshot_date",
                    "recipe_data",
                    "ingredients_data",
                    "is_backfilled",
                ],
                select(
                    _uuid4_sql(conn),
                    now_value,
                    now_value,
                    runs.c.recipe_id,
                    runs.c.id,
                    literal(1.0),
                    # Never NULL: a run without produced_at is never migrated (undated).
                    runs.c.produced_at,
                    payload_table.c.recipe_data,
                    payload_table.c.ingredients_data,
                    literal(True),
                )
                .select_from(
                    runs.join(payload_table, payload_table.c.recipe_id == runs.c.recipe_id)
                )
                .where(_among(conn, runs.c.id, created_ids)),
            )
            # SQLAlchemy drops an INSERT's rowcount on some drivers (psycopg: -1) unless asked.
            .execution_options(preserve_rowcount=True)
        ).rowcount
        if created != len(created_ids):
            raise RunAbortedError(
                f"created {created} snapshots for {len(created_ids)} runs: a payload is missing"
            )
    link_ids = [r.id for r in link_rows]
    run_ids = link_ids + created_ids
    if not run_ids:
        return
    still_unlinked = and_(_among(conn, runs.c.id, run_ids), runs.c.recipe_snapshot_id.is_(None))
    # The journal copies updated_at in SQL so rollback restores it byte for byte.
    conn.execute(
        insert(journal).from_select(
            [
                "run_token",
                "production_run_id",
                "snapshot_id",
                "created_snapshot",
                "previous_updated_at",
                "linked_at",
            ],
            select(
                literal(token),
                runs.c.id,
                snaps.c.id,
                # "created" is "not linked to an existing one": the short list (~1% of runs),
                # often empty, which every backend reads as "not among none": true.
                ~_among(conn, runs.c.id, link_ids),
                runs.c.updated_at,
                literal(now),
            )
            .select_from(runs.join(snaps, snaps.c.production_run_id == runs.c.id))
            .where(still_unlinked),
        )
    )
    own_snapshot = (
        select(snaps.c.id).where(snaps.c.production_run_id == runs.c.id).scalar_subquery()
    )
    linked = conn.execute(
        update(runs).where(still_unlinked).values(recipe_snapshot_id=own_snapshot, updated_at=now)
    ).rowcount
    if linked != len(run_ids):
        raise RunAbortedError(
            f"linked {linked} of the {len(run_ids)} runs of a batch (runs {min(run_ids)}.."
            f"{max(run_ids)}): another writer changed them meanwhile; the batch was rolled "
            "back, run again to finish the job"
        )


def _link_isolating_failures(
    conn: Connection,
    batch: _Batch,
    report: RunReport,
    recipe_failures: Optional[dict[int, str]] = None,
) -> None:
    """Write a batch; if it fails, redo it run by run and record the runs that fail.

    The runs of a recipe in ``recipe_failures`` (its payload could not be built or stored)
    are recorded as errors up front, with the reason, and the rest of the batch goes on.
    """
    if recipe_failures:
        blocked = [r for r in batch.migrate if r.recipe_id in recipe_failures]
        if blocked:
            batch.migrate = [r for r in batch.migrate if r.recipe_id not in recipe_failures]
            report.errors.extend(
                RunError(
                    r.id,
                    f"recipe {r.recipe_id} cannot be snapshotted: {recipe_failures[r.recipe_id]}",
                    recipe_id=r.recipe_id,
                )
                for r in blocked
            )
    if not batch.migrate and not batch.link:
        return
    now = utc_now()
    try:
        with conn.begin_nested():
            _link(conn, batch.link, batch.migrate, report.run_token, now)
        report.linked_existing += len(batch.link)
        report.migrated += len(batch.migrate)
        return
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise
    failures: list[RunError] = []
    for row in [*batch.link, *batch.migrate]:
        is_link = row in batch.link
        try:
            with conn.begin_nested():
                _link(
                    conn,
                    [row] if is_link else [],
                    [] if is_link else [row],
                    report.run_token,
                    now,
                )
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            failures.append(RunError(row.id, describe_db_error(exc)))
            continue
        if is_link:
            report.linked_existing += 1
        else:
            report.migrated += 1
    attempted = len(batch.link) + len(batch.migrate)
    if attempted > 1 and len(failures) == attempted:
        # Every run failing the same way is the database refusing, not bad rows: stop.
        raise RunAbortedError(
            f"every run of a batch failed (runs {min(f.run_id for f in failures)}.."
            f"{max(f.run_id for f in failures)}); "
            f"stopping: {failures[0].error}"
        )
    report.errors.extend(failures)


def run(
    engine: Engine,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    on_progress: Optional[ProgressCallback] = None,
    known_plan: Optional[Plan] = None,
    max_batch_seconds: Optional[float] = None,
    pause_s: float = 0.0,
    min_age_s: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RunReport:
    """Backfill a snapshot for every unlinked run, one committed transaction per batch.

    The cost to a live application is bounded: with ``max_batch_seconds`` the batch size
    adapts between batches to keep each write transaction under it (``pacing.BatchSizer``,
    starting from ``batch_size``); ``pause_s`` sleeps between batches (on SQLite an
    application needs one to get its turn: ``pacing.default_pause``). The run takes only
    runs up to the highest id of the plan (``known_plan``'s if given: the one the user saw)
    and created at least ``min_age_s`` seconds ago; the others are the application's, counted
    in ``too_recent``. ``clock`` and ``sleep`` time the batches (tests inject their own).

    Safe to repeat and to resume: a second run finds nothing to do, and a run interrupted
    between batches (Ctrl-C raises InterruptedRunError; a crash just stops) keeps every
    committed batch, so the next run finishes the job. A run that fails to link (e.g. a
    constraint) is recorded in the report's errors and the others go on.

    ``known_plan`` is a plan the caller has just made (to show it, or to ask): if it found
    nothing to do, the run reports it at once, without the lock and without planning again
    (a no-op run costs one plan). If it found work, the run plans again under the lock, as
    the database may have changed since.
    """
    _check_batch_size(batch_size)
    started = time.monotonic()
    if known_plan is not None and not known_plan.work:
        report = RunReport(
            plan=known_plan,
            run_token=new_uuid(),
            skipped_orphans=known_plan.orphaned,
            skipped_undated=known_plan.undated,
        )
        report.duration_s = time.monotonic() - started
        return report
    with read_only(engine) as conn:
        require_schema(conn)
    require_writable(engine)
    with migration_lock(engine, lock_timeout):
        # Planned again under the lock (the schema was checked above).
        with read_only(engine) as conn:
            report = RunReport(plan=_plan(conn), run_token=new_uuid())
        planned = known_plan if known_plan is not None else report.plan
        bounds = _Bounds(
            upto=planned.max_run_id,
            cutoff=utc_now() - timedelta(seconds=min_age_s) if min_age_s > 0 else None,
        )
        sizer = BatchSizer(batch_size, max_batch_seconds)
        report.pause_s = pause_s
        if report.plan.work:
            try:
                for progress in _run_batches(engine, sizer, report, bounds, clock):
                    if on_progress is not None:
                        on_progress(progress)
                    if pause_s > 0:
                        sleep(pause_s)
            except KeyboardInterrupt:
                report.interrupted = True
                report.duration_s = time.monotonic() - started
                raise InterruptedRunError(
                    "interrupted: the batches committed so far are kept; "
                    "run again to finish the job",
                    report,
                ) from None
            finally:
                report.longest_batch_s = sizer.longest_s
            report.too_recent = _count_left(engine, bounds)
        report.skipped_orphans = report.plan.orphaned
        report.skipped_undated = report.plan.undated
        if report.migrated or report.linked_existing:
            refresh_statistics(engine, *PLAN_STATISTICS)
    report.duration_s = time.monotonic() - started
    return report


def count_too_recent(engine: Engine, min_age_s: float) -> int:
    """Unlinked runs with a recipe created in the last ``min_age_s`` seconds: a run leaves them."""
    if min_age_s <= 0:
        return 0
    return _count_left(engine, _Bounds(upto=None, cutoff=utc_now() - timedelta(seconds=min_age_s)))


def _count_left(engine: Engine, bounds: _Bounds) -> int:
    """Unlinked runs with a recipe that the bounds left to the application."""
    outside = []
    if bounds.upto is not None:
        outside.append(runs.c.id > bounds.upto)
    if bounds.cutoff is not None:
        outside.append(runs.c.created_at > bounds.cutoff)
    if not outside:
        return 0
    with read_only(engine) as conn:
        return int(
            conn.execute(
                select(func.count())
                # On the one foreign key between the two (SQLAlchemy infers the ON clause, and
                # would refuse to guess if there were two).
                .select_from(runs.join(recipes))
                .where(runs.c.recipe_snapshot_id.is_(None), or_(*outside))
            ).scalar_one()
        )


def _run_batches(
    engine: Engine,
    sizer: BatchSizer,
    report: RunReport,
    bounds: _Bounds,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Progress]:
    stored: set[int] = set()
    failed: dict[int, str] = {}
    after = 0
    with engine.connect() as conn:
        with write_transaction(conn):
            create_journal(conn)
            create_payload_table(conn)
            capacity = column_capacity(conn)
        first_batch = time.monotonic()
        try:
            while True:
                batch_started = clock()
                size = sizer.size
                with write_transaction(conn):
                    batch = _next_batch(conn, after, size, bounds)
                    if batch is None:
                        return
                    missing = {r.recipe_id for r in batch.migrate} - stored - failed.keys()
                    built = build_payloads(conn, missing, capacity)
                    store_payloads(conn, built.payloads)
                    stored |= built.payloads.keys()
                    failed.update(built.failures)
                    _link_isolating_failures(conn, batch, report, failed)
                sizer.observe(clock() - batch_started, batch.rows)
                after = batch.last_id
                report.batches += 1
                done = report.migrated + report.linked_existing + len(report.errors)
                yield Progress(
                    done=done,
                    total=report.plan.work,
                    batches=report.batches,
                    elapsed_s=time.monotonic() - first_batch,
                )
        finally:
            _clean_up_quietly(conn)


def _clean_up_quietly(conn: Connection) -> None:
    """Drop the payload table, and the journal too if nothing was linked (leave no trace).

    Cleanup must not hide why a run stopped; a connection that is gone took the temporary
    table along, and an empty journal left behind is harmless (the next run reuses it).
    """
    if conn.invalidated:
        return
    try:
        if conn.in_transaction():
            conn.rollback()
        with write_transaction(conn):
            drop_payload_table(conn)
            if not conn.execute(select(exists().select_from(journal))).scalar():
                drop_journal(conn)
    except DBAPIError:
        pass


# --- verify ------------------------------------------------------------------------------


class _Problems:
    def __init__(self) -> None:
        self.listed: list[Problem] = []
        self.total = 0

    def add(self, problem: Problem) -> None:
        self.total += 1
        if len(self.listed) < MAX_PROBLEMS_LISTED:
            self.listed.append(problem)


def verify(engine: Engine) -> VerifyReport:
    """Check every run and snapshot, read-only; ``ok`` only when nothing is wrong.

    Every run whose recipe exists, or whose snapshot row exists, is linked to exactly one
    snapshot of its own; every snapshot's JSON parses; every backfilled snapshot has
    is_backfilled true, scale_factor 1.0 and snapshot_date equal to its run's produced_at.
    """
    problems = _Problems()
    with read_only(engine) as conn:
        require_schema(conn)
        runs_checked = int(conn.execute(select(func.count()).select_from(runs)).scalar_one())
        snapshots_checked = int(conn.execute(select(func.count()).select_from(snaps)).scalar_one())
        _check_links(conn, problems)
        _check_snapshot_json(conn, problems)
        _check_backfilled(conn, problems)
        orphaned = list(
            conn.execute(
                select(runs.c.id)
                .select_from(_unlinked_runs_joined())
                .where(
                    runs.c.recipe_snapshot_id.is_(None),
                    snaps.c.id.is_(None),
                    recipes.c.id.is_(None),
                )
                .order_by(runs.c.id)
            ).scalars()
        )
    return VerifyReport(
        runs_checked=runs_checked,
        snapshots_checked=snapshots_checked,
        orphaned_run_ids=orphaned,
        problems=problems.listed,
        problems_total=problems.total,
    )


def _check_links(conn: Connection, problems: _Problems) -> None:
    # Every unlinked run is a problem except an orphan (no recipe and no snapshot row): a run
    # whose recipe is gone but whose snapshot exists is one a run would link.
    unlinked = conn.execute(
        select(
            runs.c.id,
            runs.c.recipe_id,
            snaps.c.id.label("snapshot_id"),
            runs.c.produced_at.is_(None).label("undated"),
        )
        .select_from(_unlinked_runs_joined())
        .where(
            runs.c.recipe_snapshot_id.is_(None),
            recipes.c.id.is_not(None) | snaps.c.id.is_not(None),
        )
        .order_by(runs.c.id)
    )
    for row in unlinked:
        detail = f"run {row.id} (recipe {row.recipe_id}) is not linked to a snapshot"
        if row.snapshot_id is not None:
            detail += f" although snapshot {row.snapshot_id} exists for it"
        elif row.undated:
            detail += " (its produced_at is NULL: no date for a snapshot)"
        problems.add(Problem("unlinked_run", detail, run_id=row.id, snapshot_id=row.snapshot_id))
    # The alias's name is only a name in the SQL text: any other, or none, selects the same rows.
    linked_target = snaps.alias("linked_target")  # pragma: no mutate
    wrong = conn.execute(
        select(runs.c.id, runs.c.recipe_snapshot_id, linked_target.c.production_run_id)
        .select_from(runs.outerjoin(linked_target, linked_target.c.id == runs.c.recipe_snapshot_id))
        .where(
            runs.c.recipe_snapshot_id.is_not(None),
            (linked_target.c.id.is_(None)) | (linked_target.c.production_run_id != runs.c.id),
        )
        .order_by(runs.c.id)
    )
    for row in wrong:
        if row.production_run_id is None:
            detail = f"run {row.id} links snapshot {row.recipe_snapshot_id}, which does not exist"
        else:
            detail = (
                f"run {row.id} links snapshot {row.recipe_snapshot_id}, "
                f"which belongs to run {row.production_run_id}"
            )
        problems.add(
            Problem("wrong_link", detail, run_id=row.id, snapshot_id=row.recipe_snapshot_id)
        )


def _reject_constant(name: str) -> Any:
    """Strict JSON: NaN, Infinity and -Infinity are not JSON (Python's parser takes them)."""
    raise ValueError(f"{name} is not a JSON value")


def _check_snapshot_json(conn: Connection, problems: _Problems) -> None:
    # Streamed, so that the check's memory stays flat in the number of snapshots. The chunk
    # size (or none) changes how many rows are held at a time, never which rows come or in
    # what order, so no test of the results can tell one from another; benchmarks/ measures
    # the memory.
    rows = conn.execution_options(yield_per=1000).execute(  # pragma: no mutate
        select(
            snaps.c.id, snaps.c.production_run_id, snaps.c.recipe_data, snaps.c.ingredients_data
        ).order_by(snaps.c.id)
    )
    for row in rows:
        for column, expected in (("recipe_data", dict), ("ingredients_data", list)):
            try:
                value = json.loads(getattr(row, column), parse_constant=_reject_constant)
            except (TypeError, ValueError) as exc:
                problems.add(
                    Problem(
                        "bad_json",
                        f"snapshot {row.id}: {column} is not valid JSON ({exc})",
                        run_id=row.production_run_id,
                        snapshot_id=row.id,
                    )
                )
                continue
            if not isinstance(value, expected):
                problems.add(
                    Problem(
                        "bad_json",
                        f"snapshot {row.id}: {column} is a JSON {type(value).__name__}, "
                        f"not a{'n object' if expected is dict else ' list'}",
                        run_id=row.production_run_id,
                        snapshot_id=row.id,
                    )
                )


def _check_backfilled(conn: Connection, problems: _Problems) -> None:
    # Candidates by SQL; confirmed in Python, where both dates are datetimes (SQLite keeps
    # text, and two spellings of one instant must not count as a difference).
    may_be_wrong = (
        (snaps.c.scale_factor != 1.0)
        | (snaps.c.snapshot_date != runs.c.produced_at)
        | runs.c.produced_at.is_(None)
    )
    candidates = conn.execute(
        select(
            snaps.c.id,
            snaps.c.production_run_id,
            snaps.c.scale_factor,
            snaps.c.snapshot_date,
            runs.c.produced_at,
        )
        .select_from(snaps.join(runs, runs.c.id == snaps.c.production_run_id))
        .where(
            snaps.c.is_backfilled == True,
            # For speed alone: without it Python checks every backfilled snapshot and finds
            # the same problems (a narrower filter, which would miss some, is tested).
            may_be_wrong,  # pragma: no mutate
        )
        .order_by(snaps.c.id)
    )
    for row in candidates:
        if row.scale_factor != 1.0:
            problems.add(
                Problem(
                    "backfill_scale_factor",
                    f"backfilled snapshot {row.id} has scale_factor {row.scale_factor}, not 1.0",
                    run_id=row.production_run_id,
                    snapshot_id=row.id,
                )
            )
        if row.produced_at is None:
            problems.add(
                Problem(
                    "backfill_snapshot_date",
                    f"backfilled snapshot {row.id} is dated {row.snapshot_date}, "
                    f"but run {row.production_run_id} has no produced_at",
                    run_id=row.production_run_id,
                    snapshot_id=row.id,
                )
            )
        elif row.snapshot_date != row.produced_at:
            problems.add(
                Problem(
                    "backfill_snapshot_date",
                    f"backfilled snapshot {row.id} is dated {row.snapshot_date}, "
                    f"but run {row.production_run_id} was produced at {row.produced_at}",
                    run_id=row.production_run_id,
                    snapshot_id=row.id,
                )
            )
    if not journal_exists(conn):
        return
    not_flagged: Any = conn.execute(
        select(journal.c.snapshot_id, journal.c.production_run_id)
        .select_from(journal.join(snaps, snaps.c.id == journal.c.snapshot_id))
        .where(journal.c.created_snapshot == True, snaps.c.is_backfilled == False)
        .order_by(journal.c.snapshot_id)
    )
    for row in not_flagged:
        problems.add(
            Problem(
                "backfill_flag",
                f"snapshot {row.snapshot_id} was created by the backfill, "
                "but is_backfilled is false",
                run_id=row.production_run_id,
                snapshot_id=row.snapshot_id,
            )
        )


# --- rollback ----------------------------------------------------------------------------


def rollback_pending(engine: Engine) -> int:
    """How many journaled links a rollback would undo, read-only (0: nothing to undo).

    Checks the schema first, so that a file that is not the application's database is
    refused before anything (a backup, a question) is done for it.
    """
    with read_only(engine) as conn:
        require_schema(conn)
        if not journal_exists(conn):
            return 0
        return int(conn.execute(select(func.count()).select_from(journal)).scalar_one())


def rollback(
    engine: Engine,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    on_progress: Optional[ProgressCallback] = None,
    pause_s: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> RollbackReport:
    """Undo what this tool's runs did, as its journal records it, one batch at a time.

    ``pause_s`` sleeps between batches, as in ``run``.

    For each journaled link, the run is unlinked (only if it still points at the journaled
    snapshot) and its previous ``updated_at`` restored (only if nobody changed the run since);
    snapshots the tool created are deleted. Snapshots the application wrote, and backfilled
    snapshots that predate the journal, are never touched. The journal is dropped once empty.
    """
    _check_batch_size(batch_size)
    started = time.monotonic()
    report = RollbackReport()
    with read_only(engine) as conn:
        require_schema(conn)
    require_writable(engine)
    with migration_lock(engine, lock_timeout), engine.connect() as conn:
        if not journal_exists(conn):
            conn.rollback()
            report.duration_s = time.monotonic() - started
            return report
        conn.rollback()
        total = int(conn.execute(select(func.count()).select_from(journal)).scalar_one())
        conn.rollback()
        first_batch = time.monotonic()
        try:
            while True:
                with write_transaction(conn):
                    ids = list(
                        conn.execute(
                            select(journal.c.id).order_by(journal.c.id).limit(batch_size)
                        ).scalars()
                    )
                    if not ids:
                        break
                    _undo(conn, ids, report)
                report.batches += 1
                if on_progress is not None:
                    on_progress(
                        Progress(
                            done=report.journal_entries,
                            total=total,
                            batches=report.batches,
                            elapsed_s=time.monotonic() - first_batch,
                        )
                    )
                if pause_s > 0:
                    sleep(pause_s)
        except KeyboardInterrupt:
            report.interrupted = True
            report.duration_s = time.monotonic() - started
            raise InterruptedRunError(
                "interrupted: the batches committed so far are undone and the rest is still "
                "journaled; run rollback again to finish",
                report,
            ) from None
        with write_transaction(conn):
            drop_journal(conn)
    if report.runs_unlinked or report.snapshots_deleted:
        refresh_statistics(engine, *PLAN_STATISTICS)
    report.duration_s = time.monotonic() - started
    return report


def _undo(conn: Connection, ids: list[int], report: RollbackReport) -> None:
    entries = journal.c.id.in_(ids)
    ours = and_(
        entries,
        runs.c.id == journal.c.production_run_id,
        runs.c.recipe_snapshot_id == journal.c.snapshot_id,
    )
    # Runs nobody touched since the link get their previous updated_at back ...
    restored = conn.execute(
        update(runs)
        .where(ours, runs.c.updated_at == journal.c.linked_at)
        .values(recipe_snapshot_id=None, updated_at=journal.c.previous_updated_at)
    ).rowcount
    # ... runs the application changed since keep the updated_at it wrote: said explicitly,
    # or the column's ORM-level onupdate would stamp the rollback's own clock time instead.
    unlinked = conn.execute(
        update(runs).where(ours).values(recipe_snapshot_id=None, updated_at=runs.c.updated_at)
    ).rowcount
    # The ids, not a subquery: MariaDB (before 11.1) runs "DELETE ... WHERE id IN (SELECT ...)"
    # as a scan of every snapshot with a dependent subquery each, so that rollback at 10k
    # runs took two minutes; with the ids it deletes by primary key.
    created_by_us = list(
        conn.execute(
            select(journal.c.snapshot_id).where(entries, journal.c.created_snapshot == True)
        ).scalars()
    )
    still_linked = exists().where(runs.c.recipe_snapshot_id == snaps.c.id)
    deleted = (
        conn.execute(delete(snaps).where(snaps.c.id.in_(created_by_us), ~still_linked)).rowcount
        if created_by_us
        else 0
    )
    conn.execute(delete(journal).where(entries))
    report.journal_entries += len(ids)
    report.runs_unlinked += int(restored) + int(unlinked)
    report.snapshots_deleted += int(deleted)
    report.left_alone += len(ids) - int(restored) - int(unlinked)
