"""Operating the migrator on a live database (issues 13 and 14), through the command line.

Rollback keeps the application's writes, commands validate before they back up, one
migration lock for every writing command, safety before consent on servers, ``plan
--check``, and the bounded impact of a run on the application.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Optional

import pytest
import sqlalchemy as sa

from snapshot_backfill.database import open_engine
from snapshot_backfill.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_LOCKED, EXIT_OK
from snapshot_backfill.models import production_runs, recipe_snapshots, recipes
from snapshot_backfill.testing import fingerprint
from snapshot_backfill.testing.backends import MARIADB, Backend

from cli_process import PROCESS_TIMEOUT_S, cli, main_in_process
from test_reliability import relax_produced_at


def writing(backend: Backend) -> list[str]:
    """What a writing command needs to run unattended on ``backend``."""
    return ["--database-url", backend.cli_url, "--yes"]


def loaded_and_run(backend: Backend) -> None:
    """The bundled sample loaded into the backend's database, then backfilled."""
    result = main_in_process("load-sample", "--database-url", backend.cli_url)
    assert result.code == EXIT_OK, result
    result = main_in_process("run", *writing(backend), "--no-backup", "--json")
    assert result.code == EXIT_OK, result
    assert result.json["migrated"] > 0, result


# --- issue 13, 1: rollback keeps the application's newer updated_at ------------------------


def test_rollback_keeps_an_updated_at_the_application_wrote_after_the_link(
    backend: Backend,
) -> None:
    loaded_and_run(backend)
    engine = backend.make_engine()
    later = datetime(2030, 1, 2, 3, 4, 5)
    with engine.begin() as conn:
        run_id = conn.execute(
            sa.select(sa.func.min(production_runs.c.id)).where(
                production_runs.c.recipe_snapshot_id.is_not(None)
            )
        ).scalar_one()
        # The application's own UPDATE: an explicit updated_at, as its ORM writes it.
        conn.execute(
            sa.update(production_runs)
            .where(production_runs.c.id == run_id)
            .values(updated_at=later, notes="edited after the backfill")
        )
    result = main_in_process("rollback", *writing(backend), "--no-backup", "--json")
    assert result.code == EXIT_OK, result
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(production_runs.c.updated_at, production_runs.c.recipe_snapshot_id).where(
                production_runs.c.id == run_id
            )
        ).one()
    assert row.recipe_snapshot_id is None
    assert row.updated_at == later


def test_load_sample_keeps_the_updated_at_it_inserted_when_it_links(backend: Backend) -> None:
    # Every UPDATE the tool issues says which updated_at it means; load-sample's links and
    # variant links are not a change made later than the rows' own time.
    result = main_in_process("load-sample", "--database-url", backend.cli_url)
    assert result.code == EXIT_OK, result
    engine = backend.make_engine()
    with engine.connect() as conn:
        linked = conn.execute(
            sa.select(production_runs.c.created_at, production_runs.c.updated_at).where(
                production_runs.c.recipe_snapshot_id.is_not(None)
            )
        ).all()
        variants = conn.execute(
            sa.select(recipes.c.created_at, recipes.c.updated_at).where(
                recipes.c.base_recipe_id.is_not(None)
            )
        ).all()
    assert linked and variants
    assert all(r.updated_at == r.created_at for r in [*linked, *variants])


# --- issue 13, 4 / issue 14: rollback validates before it backs up --------------------------


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _foreign_sqlite(path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE inventory (id INTEGER PRIMARY KEY, label TEXT)")
        conn.exec_driver_sql("INSERT INTO inventory (label) VALUES ('flour')")
    engine.dispose()


@pytest.mark.process
@pytest.mark.parametrize("kind", ["zero-byte file", "foreign SQLite database"])
def test_rollback_refuses_a_file_that_is_not_the_applications_before_any_backup(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "bake.db"
    if kind == "zero-byte file":
        path.write_bytes(b"")
    else:
        _foreign_sqlite(path)
    content = path.read_bytes()
    result = cli("rollback", "--database-url", str(path), "--yes")
    assert result.code == EXIT_BAD_INPUT, result
    assert len(result.stderr.strip().splitlines()) == 1, result
    assert path.read_bytes() == content
    # No backup, no lock file: nothing was done for a database that is not one.
    assert _listing(tmp_path) == ["bake.db"], result


def test_rollback_with_nothing_to_undo_says_so_without_asking_or_backing_up(
    backend: Backend,
) -> None:
    result = main_in_process("load-sample", "--database-url", backend.cli_url)
    assert result.code == EXIT_OK, result
    directory = backend.path.parent if backend.path is not None else None
    before = _listing(directory) if directory is not None else None
    # No --yes and no terminal: a prompt would be refused with exit 2.
    result = main_in_process("rollback", "--database-url", backend.cli_url)
    assert result.code == EXIT_OK, result
    assert "nothing to undo" in result.stdout.lower(), result
    assert "Backup" not in result.stdout and "pg_dump" not in result.stdout, result
    if directory is not None:
        assert _listing(directory) == before
    result = main_in_process("rollback", "--database-url", backend.cli_url, "--json")
    assert result.code == EXIT_OK, result
    assert result.json["journal_entries"] == 0


# --- issue 14: one migration lock for every command that writes ----------------------------

# A real `run` that stops after its first committed batch, holding the migration lock, until
# the test removes the file it waits on.
_HOLDING_RUN = """
import sys, time
from pathlib import Path
from snapshot_backfill import cli

held, release = Path(sys.argv[1]), Path(sys.argv[2])

def hold(self, progress):
    if not held.exists():
        held.touch()
        while release.exists():
            time.sleep(0.05)

cli._ProgressPrinter.__call__ = hold
sys.exit(cli.main(sys.argv[3:]))
"""


def _drop_an_index(backend: Backend) -> None:
    """Leave upgrade-schema one step to do (an index) on a database `run` can work on."""
    engine = backend.make_engine()
    on = " ON recipes" if backend.name == "mariadb" else ""
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP INDEX ix_recipes_is_production_ready{on}")
    engine.dispose()


def _index_missing(backend: Backend) -> bool:
    engine = backend.make_engine()
    with engine.connect() as conn:
        names = {i["name"] for i in sa.inspect(conn).get_indexes("recipes")}
    engine.dispose()
    return "ix_recipes_is_production_ready" not in names


@pytest.mark.process
def test_upgrade_schema_waits_for_or_is_refused_the_lock_a_run_holds(
    backend: Backend, tmp_path: Path
) -> None:
    result = cli("load-sample", "--database-url", backend.cli_url)
    assert result.code == EXIT_OK, result
    _drop_an_index(backend)
    held, release = tmp_path / "held", tmp_path / "release"
    release.touch()
    environ = {k: v for k, v in os.environ.items() if k != "SNAPSHOT_BACKFILL_DATABASE_URL"}
    holder = subprocess.Popen(
        [
            *(sys.executable, "-c", _HOLDING_RUN, str(held), str(release)),
            # Held by the release file, not by its pace: no pause between its 64 batches.
            *("run", *writing(backend), "--no-backup", "--batch-size", "1", "--pause", "0"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
    )
    waiter: Optional[subprocess.Popen[str]] = None
    try:
        while not held.exists():
            assert holder.poll() is None, holder.communicate()
            time.sleep(0.05)
        upgrade = ["upgrade-schema", *writing(backend), "--no-backup"]
        refused = cli(*upgrade, "--lock-timeout", "0")
        assert refused.code == EXIT_LOCKED, refused
        assert "another snapshot-backfill" in refused.stderr, refused
        assert _index_missing(backend)
        waiter = subprocess.Popen(
            [sys.executable, "-m", "snapshot_backfill", *upgrade, "--lock-timeout", "600"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
        )
        # It waits as long as the run holds the lock (given time to have finished otherwise).
        with pytest.raises(subprocess.TimeoutExpired):
            waiter.wait(timeout=3)
        assert _index_missing(backend)
    finally:
        release.unlink()
        out, err = holder.communicate(timeout=PROCESS_TIMEOUT_S)
    assert holder.returncode == EXIT_OK, (out, err)
    out, err = waiter.communicate(timeout=PROCESS_TIMEOUT_S)
    assert waiter.returncode == EXIT_OK, (out, err)
    assert not _index_missing(backend)


# --- issue 14: safety before consent ---------------------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize("command", ["run", "rollback", "upgrade-schema"])
def test_yes_alone_does_not_write_to_a_server(backend: Backend, command: str) -> None:
    if backend.is_sqlite:
        pytest.skip("a SQLite file is backed up by the tool itself")
    loaded_and_run(backend)
    if command == "upgrade-schema":
        _drop_an_index(backend)
    elif command == "run":
        assert cli("rollback", *writing(backend), "--no-backup").code == EXIT_OK
    engine = backend.make_engine()
    before = fingerprint.take(engine)
    result = cli(command, *writing(backend))
    assert result.code == EXIT_BAD_INPUT, result
    dump = "pg_dump" if backend.name == "postgresql" else "mysqldump"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and dump in lines[0] and "--backup-taken" in lines[0], result
    fingerprint.assert_same(before, fingerprint.take(engine), f"{command} --yes wrote")
    done = cli(command, *writing(backend), "--backup-taken")
    assert done.code == EXIT_OK, done
    assert dump in done.stdout, done


# --- issue 14: plan --check ------------------------------------------------------------------


def test_plan_check_fails_while_runs_would_be_written_or_linked(backend: Backend) -> None:
    result = main_in_process("load-sample", "--database-url", backend.cli_url)
    assert result.code == EXIT_OK, result
    pending = main_in_process("plan", "--database-url", backend.cli_url, "--check", "--json")
    assert pending.code == EXIT_FAILED, pending
    assert pending.json["to_migrate"] + pending.json["to_link_existing"] > 0
    human = main_in_process("plan", "--database-url", backend.cli_url, "--check")
    assert human.code == EXIT_FAILED and "would be written or linked" in human.stdout, human
    assert main_in_process("run", *writing(backend), "--no-backup").code == EXIT_OK
    # Orphans are left alone by a run: nothing more to write, so the check passes.
    done = main_in_process("plan", "--database-url", backend.cli_url, "--check", "--json")
    assert done.code == EXIT_OK, done
    assert done.json["orphaned"] > 0


# --- issue 14: the application's default database --------------------------------------------

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "migrate_production_snapshots.py"


def _app_environ(home: Path, app_env: Optional[str] = None) -> dict[str, str]:
    environ = {"HOME": str(home), "USERPROFILE": str(home)}
    if app_env is not None:
        environ["BAKING_TRACKER_ENV"] = app_env
    return environ


def _load(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    result = cli("load-sample", "--database-url", str(path))
    assert result.code == EXIT_OK, result


@pytest.mark.process
def test_without_a_url_the_app_default_database_is_used_and_named(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    database = home / "Documents" / "BakeTracker" / "baking_tracker.db"
    _load(database)
    result = cli("plan", cwd=tmp_path, env=_app_environ(home))
    assert result.code == EXIT_OK, result
    first = result.stdout.splitlines()[0]
    assert str(database) in first and "BAKING_TRACKER_ENV" in first and "production" in first
    # The work package's documented usage, with no URL at all.
    dry = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("SNAPSHOT_", "BAKING_"))},
            **_app_environ(home),
        },
        timeout=PROCESS_TIMEOUT_S,
    )
    assert dry.returncode == EXIT_OK, dry.stderr
    assert str(database) in dry.stdout and "Dry run: nothing was changed." in dry.stdout
    # Said before the question: refused here (no terminal), but after naming the database.
    refused = cli("run", cwd=tmp_path, env=_app_environ(home, "Production"))
    assert refused.code == EXIT_BAD_INPUT, refused
    assert str(database) in refused.stdout.splitlines()[0], refused


@pytest.mark.process
def test_a_missing_default_database_is_named_and_never_created(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    for command in (["plan"], ["run", "--yes"], ["rollback", "--yes"], ["verify"]):
        result = cli(*command, cwd=tmp_path, env=_app_environ(home))
        assert result.code == EXIT_BAD_INPUT, result
        line = result.stderr.strip()
        assert len(line.splitlines()) == 1, result
        expected = home / "Documents" / "BakeTracker" / "baking_tracker.db"
        assert str(expected) in line and "BAKING_TRACKER_ENV" in line, result
        assert "--database-url" in line and "SNAPSHOT_BACKFILL_DATABASE_URL" in line, result
    assert list(home.iterdir()) == []


@pytest.mark.process
def test_in_development_the_checkouts_database_is_used(tmp_path: Path) -> None:
    checkout = tmp_path / "bake-tracker"
    (checkout / "src" / "utils").mkdir(parents=True)
    (checkout / "src" / "utils" / "db.py").write_text("# the application's database module\n")
    database = checkout / "data" / "baking_tracker.db"
    _load(database)
    inside = checkout / "src"
    result = cli("plan", "--json", cwd=inside, env=_app_environ(tmp_path, "development"))
    assert result.code == EXIT_OK, result
    assert str(database) in result.stderr and "development" in result.stderr, result
    assert result.json["total_runs"] > 0
    # Outside a checkout there is no development database to guess.
    outside = cli("plan", cwd=tmp_path, env=_app_environ(tmp_path, "development"))
    assert outside.code == EXIT_BAD_INPUT, outside
    assert "checkout" in outside.stderr and "src/utils/db.py" in outside.stderr, outside
    unknown = cli("plan", cwd=inside, env=_app_environ(tmp_path, "staging"))
    assert unknown.code == EXIT_BAD_INPUT, unknown
    assert "BAKING_TRACKER_ENV=staging" in unknown.stderr, unknown


@pytest.mark.process
def test_an_explicit_url_wins_over_the_application_default(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _load(home / "Documents" / "BakeTracker" / "baking_tracker.db")
    other = tmp_path / "other.db"
    _load(other)
    result = cli("plan", cwd=tmp_path, env=_app_environ(home), url_env=str(other))
    assert result.code == EXIT_OK, result
    assert "Using" not in result.stdout and str(other) in result.stdout, result


# --- issue 14: honest output -----------------------------------------------------------------


def test_the_progress_rate_and_eta_are_measured_from_the_first_batch() -> None:
    from snapshot_backfill.backfill import Progress
    from snapshot_backfill.cli import progress_line

    line = progress_line(Progress(done=12000, total=48000, batches=3, elapsed_s=2.0), "runs")
    assert line == "12,000/48,000 runs (3 batches, 6,000 runs/s, ETA 6s)"


@pytest.mark.process
def test_piped_progress_shows_a_rate_and_an_eta(sqlite_backend: Backend) -> None:
    result = cli("load-sample", "--database-url", sqlite_backend.cli_url)
    assert result.code == EXIT_OK, result
    result = cli(*["run", *writing(sqlite_backend), "--no-backup", "--batch-size", "5"])
    assert result.code == EXIT_OK, result
    lines = [line for line in result.stderr.splitlines() if "batches" in line]
    assert lines and all("runs/s, ETA " in line for line in lines), result


# A real `rollback` that is interrupted (SIGINT, as Ctrl-C sends) after its first batch.
# raise_signal, not os.kill: on Windows os.kill(pid, SIGINT) ends the process outright.
_INTERRUPTED_ROLLBACK = """
import signal, sys
from snapshot_backfill import cli

def interrupt(self, progress):
    signal.raise_signal(signal.SIGINT)

cli._ProgressPrinter.__call__ = interrupt
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.process
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_an_interrupted_rollback_prints_a_summary_and_exits_130(
    backend: Backend, as_json: bool
) -> None:
    loaded_and_run(backend)
    environ = {k: v for k, v in os.environ.items() if k != "SNAPSHOT_BACKFILL_DATABASE_URL"}
    argv = ["rollback", *writing(backend), "--no-backup", "--batch-size", "2"]
    done = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_ROLLBACK, *argv, *(["--json"] if as_json else [])],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=environ,
        timeout=PROCESS_TIMEOUT_S,
    )
    assert done.returncode == 130, (done.stdout, done.stderr)
    if as_json:
        report = json.loads(done.stdout)
        assert report["interrupted"] is True and report["journal_entries"] == 2, report
    else:
        assert "Rolled back 2 journal entries" in done.stdout, done.stdout
        assert "interrupted" in done.stdout + done.stderr
    # The rest is still journaled: a second rollback finishes it.
    again = cli("rollback", *writing(backend), "--no-backup", "--json")
    assert again.code == EXIT_OK and again.json["journal_entries"] > 0, again


# --- issue 14: bounded impact on a live application ------------------------------------------


def test_the_batch_size_halves_over_the_target_and_grows_gently_well_under_it() -> None:
    from snapshot_backfill.pacing import MAX_BATCH_SIZE, BatchSizer

    probe = BatchSizer(5000, max_seconds=1.0)
    assert probe.size == 500  # a small first batch: this database's speed is not known yet
    sizer = BatchSizer(1000, max_seconds=1.0)
    sizer.size = 1000
    sizer.observe(3.0, 1000)
    assert sizer.size == 500
    sizer.observe(0.8, 500)  # under the target, not well under: kept
    assert sizer.size == 500
    sizer.observe(0.1, 500)
    assert sizer.size == 625
    sizer.observe(0.1, 12)  # a short last batch says nothing about the size
    assert sizer.size == 625
    for _ in range(5):
        sizer.observe(0.1, sizer.size)
    assert sizer.size == 1000  # never above the size asked for
    assert sizer.longest_s == 3.0
    tiny = BatchSizer(1, max_seconds=0.01)
    tiny.observe(5.0, 1)
    assert tiny.size == 1
    big = BatchSizer(MAX_BATCH_SIZE, max_seconds=10.0)
    big.size = MAX_BATCH_SIZE
    big.observe(0.0, MAX_BATCH_SIZE)
    assert big.size == MAX_BATCH_SIZE
    fixed = BatchSizer(7)
    fixed.observe(99.0, 7)
    assert fixed.size == 7 and fixed.longest_s == 99.0


class FakeClock:
    """Each batch 'takes' the next of ``durations`` seconds (two readings a batch)."""

    def __init__(self, durations: list[float]) -> None:
        self.durations = list(durations)
        self.now = 0.0
        self.started = True

    def __call__(self) -> float:
        self.started = not self.started
        if self.started:  # the end of a batch
            self.now += self.durations.pop(0) if self.durations else 0.0
        return self.now


def _batch_sizes(
    engine: Any, monkeypatch: pytest.MonkeyPatch, **options: Any
) -> tuple[list[int], Any]:
    """Run; return the size each batch asked for, and the report."""
    from snapshot_backfill import backfill

    sizes: list[int] = []
    real = backfill._next_batch

    def spy(conn: Any, after: int, size: int, *rest: Any) -> Any:
        batch = real(conn, after, size, *rest)
        if batch is not None:
            sizes.append(size)
        return batch

    monkeypatch.setattr(backfill, "_next_batch", spy)
    report = backfill.run(engine, **options)
    return sizes, report


def test_a_run_adapts_its_batches_to_the_target_and_pauses_between_them(
    backend: Backend, build_state: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_state("from_sample_data")
    engine = backend.make_engine()
    slept: list[float] = []
    sizes, report = _batch_sizes(
        engine,
        monkeypatch,
        batch_size=8,
        max_batch_seconds=1.0,
        clock=FakeClock([3.0, 3.0, 3.0, 3.0, 0.1, 0.1, 0.1]),
        pause_s=0.25,
        sleep=slept.append,
    )
    # Over the target four times: halved down to 1; then well under it: grown by a quarter
    # (at least one) after each full batch.
    assert sizes[:8] == [8, 4, 2, 1, 1, 2, 3, 4], sizes
    assert report.longest_batch_s == 3.0
    assert slept == [0.25] * report.batches
    assert report.to_dict()["longest_batch_s"] == 3.0


def _link_of(engine: sa.Engine, run_id: int) -> Optional[int]:
    """The snapshot run ``run_id`` links (its recipe_snapshot_id), or None."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(production_runs.c.recipe_snapshot_id).where(production_runs.c.id == run_id)
        ).scalar_one()


def _record_a_late_run(engine: sa.Engine) -> int:
    """The application records a run (a copy of an unlinked one) after a plan was made."""
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(production_runs).where(
                production_runs.c.recipe_snapshot_id.is_(None),
                production_runs.c.recipe_id.in_(sa.select(recipes.c.id)),
            )
        ).first()
        assert row is not None
        values = {k: v for k, v in row._mapping.items() if k not in ("id", "uuid")}
        return int(
            conn.execute(
                sa.insert(production_runs).values(**values, uuid=str(uuid.uuid4()))
            ).inserted_primary_key[0]
        )


def test_a_run_takes_no_run_added_after_its_plan(backend: Backend, build_state: Any) -> None:
    from snapshot_backfill import backfill

    build_state("from_sample_data")
    engine = backend.make_engine()
    the_plan = backfill.plan(engine)
    late = _record_a_late_run(engine)
    assert the_plan.max_run_id is not None and late > the_plan.max_run_id
    report = backfill.run(engine, known_plan=the_plan)
    assert report.too_recent == 1
    assert report.migrated == the_plan.to_migrate
    assert _link_of(engine, late) is None


def test_a_plan_without_a_highest_id_bounds_nothing_and_leaves_nothing_behind(
    backend: Backend, build_state: Any
) -> None:
    """A plan built by hand, without ``max_run_id``: the run takes every run, late ones too."""
    from snapshot_backfill import backfill

    build_state("from_sample_data")
    engine = backend.make_engine()
    the_plan = dataclasses.replace(backfill.plan(engine), max_run_id=None)
    late = _record_a_late_run(engine)
    report = backfill.run(engine, known_plan=the_plan)
    assert report.too_recent == 0 and report.ok, report
    assert report.migrated + report.linked_existing == the_plan.work + 1, report
    assert _link_of(engine, late) is not None


def test_runs_younger_than_min_age_are_left_to_the_application(backend: Backend) -> None:
    from snapshot_backfill.models import utc_now

    result = main_in_process("load-sample", "--database-url", backend.cli_url)
    assert result.code == EXIT_OK, result
    engine = backend.make_engine()
    with engine.begin() as conn:
        # A run to migrate (its recipe present, no snapshot row), as the application just wrote.
        young = conn.execute(
            sa.select(sa.func.max(production_runs.c.id))
            .select_from(production_runs.join(recipes, recipes.c.id == production_runs.c.recipe_id))
            .where(
                production_runs.c.recipe_snapshot_id.is_(None),
                ~sa.exists().where(recipe_snapshots.c.production_run_id == production_runs.c.id),
            )
        ).scalar_one()
        conn.execute(
            sa.update(production_runs)
            .where(production_runs.c.id == young)
            .values(created_at=utc_now(), updated_at=production_runs.c.updated_at)
        )
    ran = main_in_process("run", *writing(backend), "--no-backup", "--json")
    assert ran.code == EXIT_OK, ran
    assert ran.json["too_recent"] == 1 and "longest_batch_s" in ran.json, ran
    assert _link_of(engine, young) is None
    text = main_in_process("run", *writing(backend), "--no-backup")
    # Said on the screen before the question, and in the report after the run.
    assert "Of these, 1 runs created in the last 300 seconds are left" in text.stdout, text
    assert "left to the application: 1 runs" in text.stdout, text
    now = main_in_process("run", *writing(backend), "--no-backup", "--min-age", "0", "--json")
    assert now.code == EXIT_OK and now.json["migrated"] == 1 and now.json["too_recent"] == 0, now


def test_min_age_counts_only_runs_created_within_it_and_zero_turns_it_off(
    backend: Backend, build_state: Any
) -> None:
    from snapshot_backfill import backfill
    from snapshot_backfill.models import utc_now

    info = build_state("from_sample_data")
    engine = backend.make_engine()
    # One run to migrate dated a minute ahead (an application whose clock runs fast); the
    # sample's other runs to migrate are years old.
    ahead = max(info.to_migrate)
    with engine.begin() as conn:
        conn.execute(
            sa.update(production_runs)
            .where(production_runs.c.id == ahead)
            .values(created_at=utc_now() + timedelta(minutes=1))
        )
    # Any age guard at all holds it back, and only it ...
    assert [backfill.count_too_recent(engine, s) for s in (0.5, 300, 86400)] == [1, 1, 1]
    # ... and none holds back nothing, whatever the run's clock said.
    assert backfill.count_too_recent(engine, 0) == 0
    report = backfill.run(engine, min_age_s=0)
    assert report.too_recent == 0 and report.ok, report
    assert _link_of(engine, ahead) is not None
    # Linked, it is still dated ahead, but there is nothing left to hold back.
    assert backfill.count_too_recent(engine, 300) == 0


def test_a_run_exactly_min_age_old_is_old_enough(
    backend: Backend, build_state: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from snapshot_backfill import backfill

    info = build_state("from_sample_data")
    engine = backend.make_engine()
    now = datetime(2026, 6, 1, 12, 0, 0)
    monkeypatch.setattr(backfill, "utc_now", lambda: now)
    run_id = max(info.to_migrate)
    with engine.begin() as conn:
        conn.execute(
            sa.update(production_runs)
            .where(production_runs.c.id == run_id)
            .values(created_at=now - timedelta(seconds=300))
        )
    assert backfill.count_too_recent(engine, 300) == 0
    assert backfill.count_too_recent(engine, 301) == 1
    report = backfill.run(engine, min_age_s=300)
    assert report.too_recent == 0 and report.ok, report
    assert report.migrated + report.linked_existing == report.plan.work, report


def test_the_librarys_run_takes_a_run_created_this_instant(
    backend: Backend, build_state: Any
) -> None:
    """``run``'s min_age_s defaults to 0: waiting for the application is the command line's
    choice (``--min-age``, 300 s), not the library's."""
    from snapshot_backfill import backfill
    from snapshot_backfill.models import utc_now

    build_state("from_sample_data")
    engine = backend.make_engine()
    late = _record_a_late_run(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.update(production_runs)
            .where(production_runs.c.id == late)
            .values(created_at=utc_now(), updated_at=production_runs.c.updated_at)
        )
    report = backfill.run(engine)
    assert report.too_recent == 0 and report.ok, report
    assert _link_of(engine, late) is not None


def test_a_run_with_nothing_to_do_still_has_a_run_token_and_its_duration(
    backend: Backend, build_state: Any
) -> None:
    from snapshot_backfill import backfill

    build_state("already_migrated")
    engine = backend.make_engine()
    the_plan = backfill.plan(engine)
    started = time.monotonic()
    report = backfill.run(engine, known_plan=the_plan)
    elapsed = time.monotonic() - started
    assert report.batches == 0 and not report.plan.work, report
    assert uuid.UUID(report.run_token).version == 4, report.run_token
    assert 0 <= report.duration_s <= elapsed, report


def test_runs_a_run_leaves_for_a_reason_of_their_own_are_not_too_recent(
    backend: Backend, build_state: Any
) -> None:
    from snapshot_backfill import backfill

    build_state("from_sample_data")
    engine = backend.make_engine()
    relax_produced_at(engine)
    with engine.begin() as conn:
        # The last run of all has a recipe, no snapshot and no produced_at: a run leaves it,
        # as undated.
        last = conn.execute(sa.select(sa.func.max(production_runs.c.id))).scalar_one()
        assert conn.execute(
            sa.select(production_runs.c.recipe_id).where(production_runs.c.id == last)
        ).scalar_one() in set(conn.execute(sa.select(recipes.c.id)).scalars())
        conn.execute(
            sa.update(production_runs)
            .where(production_runs.c.id == last)
            .values(produced_at=None, recipe_snapshot_id=None)
        )
        conn.execute(
            sa.delete(recipe_snapshots).where(recipe_snapshots.c.production_run_id == last)
        )
    report = backfill.run(engine)
    assert (report.skipped_undated, report.too_recent) == (1, 0), report


def locking_statements(engine: Any) -> list[str]:
    """The statements a run sends that lock rows (FOR UPDATE), whitespace collapsed."""
    from snapshot_backfill import backfill

    locking: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FOR UPDATE" in statement.upper():
            locking.append(" ".join(statement.split()))

    assert backfill.run(engine, batch_size=7).ok
    return locking


def test_a_batch_locks_only_the_runs_it_links(backend: Backend, build_state: Any) -> None:
    if backend.is_sqlite:
        pytest.skip("SQLite locks the file, not rows")
    build_state("from_sample_data")
    locking = locking_statements(backend.make_engine())
    assert locking
    for statement in locking:
        if backend.name == "postgresql":
            assert statement.endswith("FOR UPDATE OF production_runs"), statement
        else:
            assert "JOIN" not in statement.upper() and "recipes" not in statement, statement


@pytest.mark.parametrize(
    "backend_kind", [pytest.param(MARIADB, marks=pytest.mark.mariadb)], indirect=True
)
def test_a_mariadb_url_locks_the_batchs_runs_as_a_mysql_url_does(
    backend: Backend, build_state: Any
) -> None:
    # mariadb:// is SQLAlchemy's "mariadb" dialect, not "mysql": the same locks must be taken.
    build_state("from_sample_data")
    engine = open_engine(backend.url.set(drivername="mariadb+pymysql"))
    try:
        assert engine.dialect.name == "mariadb"
        locking = locking_statements(engine)
    finally:
        engine.dispose()
    assert locking
    for statement in locking:
        assert "JOIN" not in statement.upper() and "recipes" not in statement, statement


# --- issue 14: honest messages and help --------------------------------------------------------


@pytest.mark.process
def test_debug_after_the_command_is_accepted(tmp_path: Path) -> None:
    missing = tmp_path / "bake.db"
    result = cli("plan", "--database-url", str(missing), "--debug")
    assert result.code == EXIT_BAD_INPUT, result
    assert "unrecognized" not in result.stderr and "does not exist" in result.stderr, result
    assert list(tmp_path.iterdir()) == []


@pytest.mark.process
def test_a_relative_sqlite_url_hints_at_four_slashes_or_a_bare_path(tmp_path: Path) -> None:
    result = cli("plan", "--database-url", "sqlite:///tmp/no-such-bake.db", cwd=tmp_path)
    assert result.code == EXIT_BAD_INPUT, result
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1, result
    assert "sqlite:////tmp/no-such-bake.db" in line and "/tmp/no-such-bake.db" in line, result


@pytest.mark.process
def test_a_driver_that_is_not_installed_is_named_with_how_to_install_it() -> None:
    pytest.importorskip("sqlalchemy")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("psycopg2 is installed here")
    result = cli("plan", "--database-url", "postgresql+psycopg2://baker@127.0.0.1:1/bakery")
    assert result.code == EXIT_BAD_INPUT, result
    line = result.stderr.strip()
    assert "psycopg2" in line and "pip install psycopg2-binary" in line, result
    assert "postgresql://" in line, result


@pytest.mark.process
def test_help_shows_exit_codes_an_example_and_every_command_described() -> None:
    top = cli("--help")
    assert top.code == EXIT_OK, top
    assert "exit codes" in top.stdout.lower() and "130" in top.stdout, top
    assert "example" in top.stdout.lower(), top
    for command in ("load-sample", "demo"):
        sub = cli(command, "--help")
        assert sub.code == EXIT_OK, sub
        description = sub.stdout.split("\n\n")[1]
        assert not description.lstrip().startswith(("options", "positional")), sub


def test_load_sample_file_takes_a_url_as_text(tmp_path: Path) -> None:
    from snapshot_backfill.sample_data import load_sample_file

    path = tmp_path / "bake.db"
    report = load_sample_file(f"sqlite:///{path}")
    assert report.expected.total_runs > 0 and path.exists()


@pytest.mark.process
def test_datagen_has_a_command_line(tmp_path: Path) -> None:
    datagen = Path(__file__).resolve().parents[1] / "benchmarks" / "datagen.py"

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(datagen), *argv],
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT_S,
        )

    shown = run("--help")
    assert shown.returncode == 0 and "--runs" in shown.stdout and "example" in shown.stdout
    database = tmp_path / "bench.db"
    made = run(str(database), "--runs", "200")
    assert made.returncode == 0, made.stderr
    assert cli("plan", "--database-url", str(database), "--json").json["total_runs"] == 200
    again = run(str(database), "--runs", "200")
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 2, again.stderr
