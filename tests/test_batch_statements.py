"""What a run's batches send the database: one write per table, with as many parameters at any size.

A batch names its runs in three places (the snapshots to create, the runs to journal and link,
the runs linked to an existing snapshot). Bound as one parameter per run, a batch of 2,000 sends
6,000 parameters: ~10 ms a batch to expand and parse (benchmarks/README.md), and past SQLite's
host-parameter limit (999 before SQLite 3.32) an error. On SQLite and PostgreSQL each list is one
parameter (a JSON array, an array); MariaDB and MySQL keep the IN list, which they turn into a
join themselves, so there the count grows with the batch by design.

A batch the database refuses part of is redone run by run (``_link_isolating_failures``); a
healthy one never is, since that costs a statement per run and hides why the batch failed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from snapshot_backfill import backfill
from snapshot_backfill.errors import RunAbortedError
from snapshot_backfill.models import production_runs
from snapshot_backfill.testing import invariants, running
from snapshot_backfill.testing.backends import MARIADB, POSTGRESQL, Backend


def refuse_inserts_for(
    backend: Backend, engine: Engine, run_id: int, message: str = "refused by a trigger"
) -> None:
    """A trigger that refuses the snapshot of ``run_id`` with ``message``, as a constraint of
    the user's would."""
    refused = f"NEW.production_run_id = {run_id}"
    name = f"refuse_{run_id}"
    statements = {
        "sqlite": [
            f"CREATE TRIGGER {name} BEFORE INSERT ON recipe_snapshots WHEN {refused} "
            f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
        ],
        POSTGRESQL: [
            f"CREATE FUNCTION {name}() RETURNS trigger AS $$ BEGIN "
            f"IF {refused} THEN RAISE EXCEPTION '{message}'; "
            "END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
            f"CREATE TRIGGER {name} BEFORE INSERT ON recipe_snapshots "
            f"FOR EACH ROW EXECUTE FUNCTION {name}()",
        ],
        MARIADB: [
            f"CREATE TRIGGER {name} BEFORE INSERT ON recipe_snapshots FOR EACH ROW "
            f"BEGIN IF {refused} THEN "
            f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{message}'; END IF; END"
        ],
    }[backend.kind]
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


@dataclass
class Sent:
    """One statement sent to the database, and the most parameters any of its rows bound."""

    sql: str
    parameters: int

    @property
    def inserts_snapshots(self) -> bool:
        return " ".join(self.sql.split()).upper().startswith("INSERT INTO RECIPE_SNAPSHOTS")


@contextmanager
def statements_sent(engine: Engine) -> Iterator[list[Sent]]:
    """The statements sent on ``engine`` while the block ran, in order."""
    sent: list[Sent] = []

    def record(_conn: Any, _cursor: Any, sql: str, parameters: Any, _ctx: Any, many: bool) -> None:
        rows = parameters if many else [parameters]
        sent.append(Sent(sql, max((len(row or ()) for row in rows), default=0)))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def test_a_batch_binds_as_many_parameters_when_it_is_a_hundred_times_larger(
    backend: Backend, build_state: Any
) -> None:
    if backend.kind == "mariadb":
        pytest.skip("MariaDB and MySQL keep the IN list: their count grows with the batch")
    counts = {}
    for size in (2, 200):
        info = build_state("from_sample_data")
        engine = backend.make_engine()
        assert len(info.work) > 20, "a large batch names many runs, a small one two"
        with statements_sent(engine) as sent:
            report = backfill.run(engine, batch_size=size)
        assert report.ok and report.migrated == len(info.to_migrate), report
        assert report.linked_existing == len(info.to_link_existing), report
        counts[size] = max(s.parameters for s in sent)
        engine.dispose()
    assert counts[200] == counts[2], counts


def test_a_healthy_batch_creates_its_snapshots_in_one_statement(
    backend: Backend, build_state: Any
) -> None:
    info = build_state("from_sample_data")
    engine = backend.make_engine()
    with statements_sent(engine) as sent:
        report = backfill.run(engine, batch_size=backfill.MAX_BATCH_SIZE)
    inserts = [s.sql for s in sent if s.inserts_snapshots]
    assert report.ok and report.batches == 1, report
    assert report.migrated == len(info.to_migrate) > 1, report
    assert len(inserts) == 1, inserts


def test_a_run_the_database_refuses_is_redone_alone_and_the_rest_of_its_batch_is_counted(
    backend: Backend, build_state: Any
) -> None:
    info = build_state("from_sample_data")
    engine = backend.make_engine()
    assert info.to_link_existing, "the batch must hold runs linked to an existing snapshot"
    victim = sorted(info.to_migrate)[3]
    refuse_inserts_for(backend, engine, victim)
    with statements_sent(engine) as sent:
        report = backfill.run(engine, batch_size=backfill.MAX_BATCH_SIZE)
    inserts = [s.sql for s in sent if s.inserts_snapshots]
    assert report.batches == 1, report
    assert [e.run_id for e in report.errors] == [victim], report
    assert "refused by a trigger" in report.errors[0].error, report
    assert report.migrated == len(info.to_migrate) - 1, report
    assert report.linked_existing == len(info.to_link_existing), report
    # The batch's one INSERT, then one per run it redid (those linked to an existing
    # snapshot create none).
    assert len(inserts) == 1 + len(info.to_migrate), len(inserts)


def test_a_batch_of_one_refused_run_is_an_error_and_the_run_goes_on(
    backend: Backend, build_state: Any
) -> None:
    info = build_state("from_sample_data")
    engine = backend.make_engine()
    victim = sorted(info.to_migrate)[3]
    refuse_inserts_for(backend, engine, victim)
    progress: list[backfill.Progress] = []
    report = backfill.run(engine, batch_size=1, on_progress=progress.append)
    assert [e.run_id for e in report.errors] == [victim], report
    assert report.migrated == len(info.to_migrate) - 1, report
    # The refused run is done too, as far as progress goes: it is not left to do.
    assert (progress[-1].done, progress[-1].total) == (len(info.work), len(info.work)), progress


def test_a_batch_of_two_whose_runs_are_both_refused_stops_the_run(
    backend: Backend, build_state: Any
) -> None:
    """Every run of a batch refused is the database refusing, not bad rows: the run stops,
    naming the batch's runs and the first one's reason."""
    info = build_state("from_sample_data")
    engine = backend.make_engine()
    unlinked = sorted([*info.work, *info.orphaned])
    batches = [unlinked[i : i + 2] for i in range(0, len(unlinked), 2)]
    first, second = next(b for b in batches if len(b) == 2 and set(b) <= set(info.to_migrate))
    refuse_inserts_for(backend, engine, first, "no room for the first")
    refuse_inserts_for(backend, engine, second, "no room for the second")
    with pytest.raises(RunAbortedError) as stopped:
        backfill.run(engine, batch_size=2)
    message = str(stopped.value)
    assert message.startswith(f"every run of a batch failed (runs {first}..{second}); "), message
    assert message.endswith("stopping: no room for the first"), message


def test_the_batches_take_the_runs_in_id_order_whatever_order_the_table_keeps(
    backend: Backend, build_state: Any
) -> None:
    # An application that edits its runs leaves them stored out of id order (PostgreSQL writes
    # an updated row anew, after the others). A batch read in storage order would end on a run
    # above some it did not take, and the next batch, which starts after it, would never take
    # those.
    info = dataclasses.replace(build_state("from_sample_data"), batch_size=3)
    engine = backend.make_engine()
    runs = production_runs
    with engine.begin() as conn:
        ids = conn.execute(sa.select(runs.c.id).order_by(runs.c.id.desc())).scalars().all()
        for run_id in ids:
            conn.execute(sa.update(runs).where(runs.c.id == run_id).values(notes=runs.c.notes))
    where = {"backend": backend.name, "stored": "highest id first"}
    invariants.check_run_report(running.run_backfill(engine, info), info, where)
    invariants.check_verify(backfill.verify(engine), info, where, after_run=True)
