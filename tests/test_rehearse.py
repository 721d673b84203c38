"""``snapshot-backfill rehearse``: the battery on a scratch copy, the source only ever read.

Every case runs the command in a real process, on every backend: a go on the sample database
(source fingerprint and, on SQLite, bytes unchanged), a no-go naming the check and the runs on
databases where the migrator cannot be right (a trigger rewrites a snapshot column; a trigger
blocks the update of production_runs), a pre-snapshot database refused, a rehearsal killed or
interrupted mid-way, and scratch databases that must not be used.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import sqlalchemy as sa
from filelock import FileLock
from sqlalchemy.engine import Engine

from snapshot_backfill.database import open_engine
from snapshot_backfill.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from snapshot_backfill.testing import fingerprint, running
from snapshot_backfill.testing.backends import Backend
from snapshot_backfill.testing.expectations import StateInfo
from snapshot_backfill.testing.scratch import MARKER_TABLE, SCRATCH_PREFIX, SQLITE_PREFIX, host_tag

from platforms import POSIX_SIGNALS

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_rehearsal_at_a_time(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every rehearsal removes the leftovers of dead rehearsals on its server (and a killed
    one may have removed them before it died), so a test that plants a leftover must run
    alone. A file lock beside the workers' temporary directories orders them (pytest-xdist's
    loadgroup does not group these tests with pytest 9)."""
    with FileLock(str(tmp_path_factory.getbasetemp().parent / "rehearse.lock")):
        yield


PROCESS_TIMEOUT_S = 300
CHECKS = {
    "plan_is_pure",
    "verify_fails_before",
    "run_matches_plan",
    "verify_passes_after",
    "second_run_writes_nothing",
    "rollback_restores_start",
    "interrupted_run_resumes",
}

# A trigger that rewrites what the backfill writes into a snapshot, and one that refuses the
# update that links a run: the migrator cannot be right on either database.
REWRITE_SCALE_FACTOR = {
    "sqlite": [
        "CREATE TRIGGER rewrite_scale AFTER INSERT ON recipe_snapshots BEGIN "
        "UPDATE recipe_snapshots SET scale_factor = 2.0 WHERE id = NEW.id; END"
    ],
    "postgresql": [
        "CREATE FUNCTION rewrite_scale() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.scale_factor := 2.0; RETURN NEW; END $$",
        "CREATE TRIGGER rewrite_scale BEFORE INSERT ON recipe_snapshots "
        "FOR EACH ROW EXECUTE FUNCTION rewrite_scale()",
    ],
    "mariadb": [
        "CREATE TRIGGER rewrite_scale BEFORE INSERT ON recipe_snapshots "
        "FOR EACH ROW SET NEW.scale_factor = 2.0"
    ],
}
BLOCK_RUN_UPDATE = {
    "sqlite": [
        "CREATE TRIGGER block_link BEFORE UPDATE OF recipe_snapshot_id ON production_runs "
        "BEGIN SELECT RAISE(ABORT, 'production runs are read-only'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION block_link() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'production runs are read-only'; END $$",
        "CREATE TRIGGER block_link BEFORE UPDATE ON production_runs "
        "FOR EACH ROW EXECUTE FUNCTION block_link()",
    ],
    "mariadb": [
        "CREATE TRIGGER block_link BEFORE UPDATE ON production_runs FOR EACH ROW "
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'production runs are read-only'"
    ],
}


@pytest.fixture
def scratch_dir(tmp_path: Path) -> Path:
    """The temporary directory the command's SQLite scratch goes to ($TMPDIR)."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    return directory


def start(
    backend: Backend, scratch_dir: Path, *extra: str, database_url: Optional[str] = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snapshot_backfill",
            "rehearse",
            "--database-url",
            database_url or backend.cli_url,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "TMPDIR": str(scratch_dir)},
    )


def rehearse(backend: Backend, scratch_dir: Path, *extra: str) -> tuple[int, str, str]:
    process = start(backend, scratch_dir, *extra)
    out, err = process.communicate(timeout=PROCESS_TIMEOUT_S)
    return process.returncode, out, err


def scratch_names(backend: Backend, scratch_dir: Path, pid: Optional[int] = None) -> list[str]:
    """The scratch copies that exist: files in $TMPDIR, databases on the server (of ``pid``)."""
    owner = f"{host_tag()}_{pid}_" if pid is not None else ""
    if backend.is_sqlite:
        owner = owner.replace("_", "-")
        return sorted(
            Path(p).name for p in glob.glob(str(scratch_dir / f"{SQLITE_PREFIX}-{owner}*.sqlite"))
        )
    assert backend.server_url is not None
    engine = open_engine(backend.server_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if backend.kind == "postgresql":
                query = "SELECT datname FROM pg_database"
            else:
                query = "SELECT schema_name FROM information_schema.schemata"
            names = [r[0] for r in conn.exec_driver_sql(query)]
    finally:
        engine.dispose()
    return sorted(n for n in names if n.startswith(f"{SCRATCH_PREFIX}_{owner}"))


@pytest.fixture
def sample(backend: Backend, build_state: Callable[[str], StateInfo]) -> Iterator[StateInfo]:
    info = build_state("from_sample_data")
    yield info


def take(backend: Backend) -> Any:
    engine = backend.make_engine()
    try:
        return fingerprint.take(engine)
    finally:
        engine.dispose()


def execute(engine: Engine, statements: list[str]) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def document(out: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(out)
    return parsed


@pytest.mark.process
def test_go_on_the_sample_database_and_the_source_is_unchanged(
    backend: Backend, sample: StateInfo, scratch_dir: Path, tmp_path: Path
) -> None:
    before = take(backend)
    files = running.sqlite_files(backend.path) if backend.path is not None else {}
    report = tmp_path / "rehearsal.md"
    # Any batch takes longer than a microsecond: a smaller batch size is recommended.
    code, out, err = rehearse(
        backend, scratch_dir, "--json", "--report", str(report), "--max-batch-seconds", "0.000001"
    )
    assert code == EXIT_OK, err
    found = document(out)
    assert 1 <= found["recommended_batch_size"] < found["batch_size"]
    assert found["verdict"] == "go"
    assert {c["check"] for c in found["checks"]} == CHECKS
    assert all(c["ok"] for c in found["checks"]), found["checks"]
    interrupted = next(c for c in found["checks"] if c["check"] == "interrupted_run_resumes")
    assert "killed after" in interrupted["detail"]  # a real interruption, not a finished run
    assert found["plan"]["to_migrate"] == len(sample.to_migrate)
    assert found["run"]["migrated"] == len(sample.to_migrate)
    assert found["longest_batch_s"] > 0
    assert found["runs_per_s"] > 0
    assert "**go**" in report.read_text()
    fingerprint.assert_same(before, take(backend), "rehearse changed its source")
    if backend.path is not None:
        assert running.sqlite_files(backend.path) == files
    assert scratch_names(backend, scratch_dir, os.getpid()) == []
    assert found["scratch"]["name"] not in scratch_names(backend, scratch_dir)


# The application, in a process of its own (a process that opens and closes a file drops every
# POSIX lock it holds on it, so the test must not read the files where the connection lives).
APPLICATION = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1])
connection.execute("PRAGMA journal_mode = WAL")
connection.execute("PRAGMA wal_autocheckpoint = 0")
connection.execute("UPDATE recipes SET notes = 'edited in the WAL'")
connection.commit()
print("ready", flush=True)
sys.stdin.read()
connection.close()
"""


@pytest.mark.process
def test_sqlite_wal_source_keeps_its_bytes_and_side_files(
    backend: Backend, sample: StateInfo, scratch_dir: Path
) -> None:
    """With the application connected and its last commit only in the -wal file."""
    if backend.path is None:
        pytest.skip("SQLite only")
    application = subprocess.Popen(
        [sys.executable, "-c", APPLICATION, str(backend.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert application.stdout is not None and application.stdout.readline() == "ready\n"
        files = running.sqlite_files(backend.path)
        assert {f"{backend.path.name}-wal", f"{backend.path.name}-shm"} <= set(files)
        assert len(files[f"{backend.path.name}-wal"]) > 0
        code, out, err = rehearse(backend, scratch_dir, "--json")
        assert code == EXIT_OK, err
        assert running.sqlite_files(backend.path) == files
    finally:
        application.communicate("", timeout=PROCESS_TIMEOUT_S)
    assert document(out)["verdict"] == "go"


@pytest.mark.process
@pytest.mark.parametrize(
    "triggers, failing_check",
    [(REWRITE_SCALE_FACTOR, "verify_passes_after"), (BLOCK_RUN_UPDATE, "run_matches_plan")],
    ids=["trigger-rewrites-scale-factor", "trigger-blocks-run-update"],
)
def test_no_go_names_the_check_and_the_runs(
    backend: Backend,
    sample: StateInfo,
    scratch_dir: Path,
    triggers: dict[str, list[str]],
    failing_check: str,
) -> None:
    execute(backend.make_engine(), triggers[backend.kind])
    before = take(backend)
    code, out, err = rehearse(backend, scratch_dir, "--json")
    assert code == EXIT_FAILED, err
    found = document(out)
    assert found["verdict"] == "no-go"
    failed = {f["check"]: f for f in found["failed"]}
    assert failing_check in failed, found["failed"]
    run_ids = failed[failing_check]["run_ids"]
    assert run_ids and set(run_ids) <= set(sample.to_migrate) | set(sample.to_link_existing)
    assert len(found["scratch"]["triggers"]) == 1  # the trigger was copied with the tables
    fingerprint.assert_same(before, take(backend), "a no-go rehearsal changed its source")
    code, text, err = rehearse(backend, scratch_dir)
    assert code == EXIT_FAILED
    assert f"FAILED {failing_check}" in text and str(run_ids[0]) in text


@pytest.mark.process
def test_pre_snapshot_database_needs_upgrade_schema(
    backend: Backend, build_state: Callable[[str], StateInfo], scratch_dir: Path
) -> None:
    build_state("pre_snapshot_schema")
    before = take(backend)
    process = start(backend, scratch_dir)
    out, err = process.communicate(timeout=PROCESS_TIMEOUT_S)
    assert process.returncode == EXIT_BAD_INPUT
    assert "upgrade-schema" in err and len(err.strip().splitlines()) == 1
    assert "Verdict" not in out
    fingerprint.assert_same(before, take(backend), "a refused rehearsal changed its source")
    assert scratch_names(backend, scratch_dir, process.pid) == []


def _wait_for_scratch(
    backend: Backend, scratch_dir: Path, process: subprocess.Popen[str]
) -> list[str]:
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while time.monotonic() < deadline:
        names = scratch_names(backend, scratch_dir, process.pid)
        if names:
            return names
        if process.poll() is not None:
            pytest.fail(f"rehearse ended first: {process.communicate()}")
        time.sleep(0.005)
    process.kill()
    pytest.fail("rehearse made no scratch copy in time")


@pytest.mark.process
@POSIX_SIGNALS
def test_sigkill_leaves_the_source_unchanged_and_the_next_rehearsal_removes_the_scratch(
    backend: Backend, sample: StateInfo, scratch_dir: Path
) -> None:
    before = take(backend)
    process = start(backend, scratch_dir)
    left = _wait_for_scratch(backend, scratch_dir, process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=PROCESS_TIMEOUT_S)
    assert scratch_names(backend, scratch_dir, process.pid) == left  # what a kill leaves
    fingerprint.assert_same(before, take(backend), "a killed rehearsal changed its source")
    next_one = start(backend, scratch_dir)
    out, err = next_one.communicate(timeout=PROCESS_TIMEOUT_S)
    assert next_one.returncode == EXIT_OK, err
    for name in left:
        assert any(name in line and ": removed (" in line for line in out.splitlines()), (
            f"killed {process.pid}, left {left}; the next ({next_one.pid}) printed:\n{out}{err}"
        )
    assert scratch_names(backend, scratch_dir, process.pid) == []
    fingerprint.assert_same(before, take(backend), "the rehearsal after a kill changed its source")


@pytest.mark.process
@POSIX_SIGNALS
def test_ctrl_c_removes_the_scratch_and_exits_130(
    backend: Backend, sample: StateInfo, scratch_dir: Path
) -> None:
    before = take(backend)
    process = start(backend, scratch_dir)
    _wait_for_scratch(backend, scratch_dir, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=PROCESS_TIMEOUT_S)
    assert process.returncode == EXIT_INTERRUPTED, (out, err)
    assert scratch_names(backend, scratch_dir, process.pid) == []
    fingerprint.assert_same(before, take(backend), "an interrupted rehearsal changed its source")


@pytest.mark.process
def test_an_empty_scratch_url_is_used_and_left_empty(
    backend: Backend, sample: StateInfo, scratch_dir: Path
) -> None:
    if backend.is_sqlite:
        pytest.skip("a SQLite source is copied into a temporary file")
    scratch = backend.sibling()
    code, out, err = rehearse(backend, scratch_dir, "--scratch-url", scratch.cli_url, "--json")
    assert code == EXIT_OK, err
    assert document(out)["scratch"]["kind"] == "given"
    engine = scratch.make_engine()
    with engine.connect() as conn:
        assert sa.inspect(conn).get_table_names() == []


@pytest.mark.process
def test_a_non_empty_scratch_url_is_refused(
    backend: Backend, sample: StateInfo, scratch_dir: Path
) -> None:
    if backend.is_sqlite:
        code, _out, err = rehearse(backend, scratch_dir, "--scratch-url", str(scratch_dir / "x"))
        assert code == EXIT_BAD_INPUT and "temporary file" in err
        assert len(err.strip().splitlines()) == 1
        return
    scratch = backend.sibling()
    engine = scratch.make_engine()
    execute(engine, ["CREATE TABLE notes (id INTEGER PRIMARY KEY, body VARCHAR(20))"])
    execute(engine, ["INSERT INTO notes (id, body) VALUES (1, 'keep me')"])
    before = take(backend)
    code, _out, err = rehearse(backend, scratch_dir, "--scratch-url", scratch.cli_url)
    assert code == EXIT_BAD_INPUT
    assert "not empty" in err and len(err.strip().splitlines()) == 1
    with engine.connect() as conn:
        assert sa.inspect(conn).get_table_names() == ["notes"]
        assert conn.exec_driver_sql("SELECT body FROM notes").scalar() == "keep me"
    fingerprint.assert_same(before, take(backend), "a refused rehearsal changed its source")
    code, _out, err = rehearse(backend, scratch_dir, "--scratch-url", backend.cli_url)
    assert code == EXIT_BAD_INPUT and "names the source" in err


@pytest.mark.process
@pytest.mark.parametrize(
    "option, value",
    [("--max-batch-seconds", "0"), ("--max-batch-seconds", "nan"), ("--batch-size", "0")],
)
def test_bad_options_are_refused_before_anything_is_read(
    backend: Backend, sample: StateInfo, scratch_dir: Path, option: str, value: str
) -> None:
    before = take(backend)
    code, out, err = rehearse(backend, scratch_dir, option, value)
    assert code == EXIT_BAD_INPUT and option in err and len(err.strip().splitlines()) == 1
    assert out == ""
    fingerprint.assert_same(before, take(backend), "a refused rehearsal changed its source")


@pytest.mark.process
@POSIX_SIGNALS
def test_a_killed_rehearsal_in_a_scratch_url_is_emptied_by_the_next(
    backend: Backend, sample: StateInfo, scratch_dir: Path
) -> None:
    if backend.is_sqlite:
        pytest.skip("a SQLite source is copied into a temporary file")
    scratch = backend.sibling()
    engine = scratch.make_engine()
    process = start(backend, scratch_dir, "--scratch-url", scratch.cli_url)
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        with engine.connect() as conn:
            if MARKER_TABLE in sa.inspect(conn).get_table_names():
                break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=PROCESS_TIMEOUT_S)
    with engine.connect() as conn:
        assert MARKER_TABLE in sa.inspect(conn).get_table_names()  # what a kill leaves
    code, out, err = rehearse(backend, scratch_dir, "--scratch-url", scratch.cli_url)
    assert code == EXIT_OK, err
    assert f"left by process {process.pid}, which no longer exists" in out
    engine.dispose()
    with engine.connect() as conn:
        assert sa.inspect(conn).get_table_names() == []
