"""What an adversarial run found (issue 13): each case through the command line.

A recipe whose payload cannot be built or stored, non-finite numbers, disk full during the
backup, the permissions of what the tool writes, the demo and load-sample refusing to
overwrite, numeric options, passwords with an unencoded ``@``, and runs without
``produced_at``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from snapshot_backfill import backup as backup_module
from snapshot_backfill.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, BadInputError
from snapshot_backfill.models import production_runs, recipe_ingredients, recipe_snapshots, recipes
from snapshot_backfill.testing import expectations, fingerprint, states
from snapshot_backfill.testing.backends import Backend

from cli_process import Result, cli, main_in_process

POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


def recipe_with_most_runs_to_migrate(info: expectations.StateInfo) -> tuple[int, list[int]]:
    counts = Counter(info.run_recipe[r] for r in info.to_migrate)
    recipe_id = counts.most_common(1)[0][0]
    return recipe_id, sorted(r for r in info.to_migrate if info.run_recipe[r] == recipe_id)


def snapshot_texts(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(recipe_snapshots.c.recipe_data, recipe_snapshots.c.ingredients_data)
        ).all()
    return [(r.recipe_data, r.ingredients_data) for r in rows]


def linked_runs(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.select(production_runs.c.id).where(
                    production_runs.c.recipe_snapshot_id.is_not(None)
                )
            ).scalars()
        )


def assert_recipe_reported(
    result: Result, info: expectations.StateInfo, recipe_id: int, run_ids: list[int], reason: str
) -> None:
    assert result.code == EXIT_FAILED, result
    report = result.json
    errors = report["errors"]
    assert sorted(e["run_id"] for e in errors) == run_ids, result
    assert {e["recipe_id"] for e in errors} == {recipe_id}, result
    assert all(reason in e["error"] for e in errors), result
    assert report["migrated"] == len(info.to_migrate) - len(run_ids), result
    assert report["linked_existing"] == len(info.to_link_existing), result


def check_only_these_unlinked(
    backend: Backend, engine: Engine, info: expectations.StateInfo, run_ids: list[int]
) -> None:
    assert linked_runs(engine) == set(info.already_linked) | set(info.work) - set(run_ids)
    verified = main_in_process("verify", "--database-url", backend.cli_url, "--json")
    assert verified.code == EXIT_FAILED, verified
    problems = verified.json["problems"]
    assert {(p["kind"], p["run_id"]) for p in problems} == {("unlinked_run", r) for r in run_ids}, (
        verified
    )


def run_in_small_batches(backend: Backend) -> Result:
    """``run --yes --no-backup --json`` in batches of 7, so a bad recipe shares batches."""
    return main_in_process(
        "run",
        "--database-url",
        backend.cli_url,
        "--yes",
        "--no-backup",
        "--json",
        "--batch-size",
        "7",
    )


# --- 2. one recipe whose payload cannot be built or stored ---------------------------------


def test_a_recipe_whose_payload_cannot_be_built_is_reported_and_the_rest_is_linked(
    sqlite_backend: Backend,
) -> None:
    engine = sqlite_backend.make_engine()
    info = states.build_state("from_sample_data", engine)
    recipe_id, run_ids = recipe_with_most_runs_to_migrate(info)
    with engine.begin() as conn:
        line = conn.execute(
            sa.select(sa.func.min(recipe_ingredients.c.id)).where(
                recipe_ingredients.c.recipe_id == recipe_id
            )
        ).scalar_one()
        conn.execute(
            sa.update(recipe_ingredients)
            .where(recipe_ingredients.c.id == line)
            .values(quantity=sa.literal_column("'a pinch'"))
        )
    url = sqlite_backend.cli_url

    planned = main_in_process("plan", "--database-url", url, "--json")
    assert planned.code == EXIT_OK, planned
    assert planned.json["recipe_errors"] == [
        {
            "recipe_id": recipe_id,
            "runs": len(run_ids),
            "error": planned.json["recipe_errors"][0]["error"],
        }
    ], planned
    assert "a pinch" in planned.json["recipe_errors"][0]["error"]

    first = run_in_small_batches(sqlite_backend)
    assert_recipe_reported(first, info, recipe_id, run_ids, "a pinch")
    check_only_these_unlinked(sqlite_backend, engine, info, run_ids)
    human = main_in_process("run", "--database-url", url, "--yes", "--no-backup")
    assert human.code == EXIT_FAILED, human
    assert f"recipe {recipe_id}" in human.stdout, human


def test_a_payload_too_large_for_its_column_is_reported_and_the_rest_is_linked(
    backend: Backend, build_state: Any
) -> None:
    """20,000 CJK characters fit TEXT (60,000 bytes) but not their escaped JSON (120 KB)."""
    info = build_state("from_sample_data")
    engine = backend.make_engine()
    recipe_id, run_ids = recipe_with_most_runs_to_migrate(info)
    with engine.begin() as conn:
        conn.execute(sa.update(recipes).where(recipes.c.id == recipe_id).values(notes="漢" * 20000))
    result = run_in_small_batches(backend)
    if backend.kind != "mariadb":  # TEXT is unbounded there: the payload is written whole
        assert result.code == EXIT_OK, result
        assert ("\\u6f22" * 20000) in "".join(t for pair in snapshot_texts(engine) for t in pair)
        assert main_in_process("verify", "--database-url", backend.cli_url).code == EXIT_OK
        return
    assert_recipe_reported(result, info, recipe_id, run_ids, "65535")
    check_only_these_unlinked(backend, engine, info, run_ids)


# --- 3. NaN and Infinity ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_a_non_finite_quantity_is_reported_not_written_as_non_standard_json(
    backend: Backend, build_state: Any, value: str
) -> None:
    if backend.kind == "mariadb":
        pytest.skip("MariaDB's DOUBLE holds no NaN or infinity")
    if backend.kind == "sqlite" and value == "nan":
        pytest.skip("SQLite stores a NaN as NULL")
    info = build_state("from_sample_data")
    engine = backend.make_engine()
    recipe_id, run_ids = recipe_with_most_runs_to_migrate(info)
    with engine.begin() as conn:
        conn.execute(
            sa.update(recipe_ingredients)
            .where(recipe_ingredients.c.recipe_id == recipe_id)
            .values(quantity=float(value))
        )
    result = run_in_small_batches(backend)
    assert_recipe_reported(result, info, recipe_id, run_ids, "not a finite number")
    texts = "".join(t for pair in snapshot_texts(engine) for t in pair)
    assert "NaN" not in texts and "Infinity" not in texts
    check_only_these_unlinked(backend, engine, info, run_ids)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_verify_rejects_what_a_strict_json_parser_rejects(
    backend: Backend, build_state: Any, constant: str
) -> None:
    build_state("already_migrated")
    engine = backend.make_engine()
    with engine.begin() as conn:
        snapshot_id = conn.execute(sa.select(sa.func.min(recipe_snapshots.c.id))).scalar_one()
        conn.execute(
            sa.update(recipe_snapshots)
            .where(recipe_snapshots.c.id == snapshot_id)
            .values(recipe_data=f'{{"name": "x", "yield_quantity": {constant}}}')
        )
    result = main_in_process("verify", "--database-url", backend.cli_url, "--json")
    assert result.code == EXIT_FAILED, result
    assert [(p["kind"], p["snapshot_id"]) for p in result.json["problems"]] == [
        ("bad_json", snapshot_id)
    ], result


# --- 5. disk full during the backup ---------------------------------------------------------


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Any:
    """A directory on a tmpfs of the given size (root only; skipped elsewhere)."""
    mounted: list[Path] = []

    def mount(size_kb: int) -> Path:
        if sys.platform != "linux" or os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root on Linux")
        directory = tmp_path / f"tmpfs-{len(mounted)}"
        directory.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(directory)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
        mounted.append(directory)
        return directory

    yield mount
    for directory in mounted:
        subprocess.run(["umount", "-l", str(directory)], check=False)


@pytest.mark.process
@pytest.mark.parametrize("where", ["--backup PATH", "default"])
def test_disk_full_during_the_backup_leaves_nothing_behind(
    sqlite_backend: Backend, small_tmpfs: Any, where: str
) -> None:
    engine = sqlite_backend.make_engine()
    states.build_state("large", engine)
    engine.dispose()
    source = sqlite_backend.path
    assert source is not None
    size_kb = source.stat().st_size // 1024
    assert size_kb > 300, "the database must be larger than the tmpfs"
    if where == "default":
        full = small_tmpfs(size_kb + 64)
        database = full / "bake.db"
        database.write_bytes(source.read_bytes())
        args = ["--database-url", str(database)]
    else:
        full = small_tmpfs(200)
        database = source
        args = ["--database-url", str(database), "--backup", str(full / "backup.db")]
    before = _listing(full)
    content = database.read_bytes()
    result = cli("run", *args, "--yes")
    assert result.code == EXIT_BAD_INPUT, result
    assert "cannot back up" in result.stderr, result
    assert _listing(full) == before, result
    assert database.read_bytes() == content


@pytest.mark.parametrize("journal_mode", ["DELETE", "PERSIST"])
def test_a_backup_that_fails_half_way_leaves_no_file(
    sqlite_backend: Backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, journal_mode: str
) -> None:
    """In-process: the copy's page limit (SQLITE_FULL) stands in for a full disk.

    PERSIST keeps the copy's journal after the failed transaction, as a full disk that keeps
    SQLite from deleting it does.
    """
    engine = sqlite_backend.make_engine()
    states.build_state("large", engine)
    engine.dispose()
    assert sqlite_backend.path is not None
    real_connect = sqlite3.connect
    target_dir = tmp_path / "backups"
    target_dir.mkdir()

    def connect_with_a_small_disk(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(database, *args, **kwargs)
        if str(database).startswith(str(target_dir)):
            conn.execute("PRAGMA max_page_count = 20")
            conn.execute(f"PRAGMA journal_mode = {journal_mode}")
        return conn

    monkeypatch.setattr(backup_module.sqlite3, "connect", connect_with_a_small_disk)
    with pytest.raises(BadInputError, match="cannot back up"):
        backup_module.backup_sqlite(sqlite_backend.path, target_dir / "b.db")
    assert _listing(target_dir) == []


# --- 6. permissions of what the tool writes -------------------------------------------------


@pytest.mark.process
@POSIX_ONLY
def test_the_backup_lock_and_report_are_no_more_readable_than_the_database(
    sqlite_backend: Backend,
) -> None:
    engine = sqlite_backend.make_engine()
    states.build_state("from_sample_data", engine)
    engine.dispose()
    database = sqlite_backend.path
    assert database is not None
    os.chmod(database, 0o600)
    before = set(database.parent.iterdir())
    report = database.parent / "report.json"
    result = cli("run", "--database-url", str(database), "--yes", "--report", str(report))
    assert result.code == EXIT_OK, result
    written = set(database.parent.iterdir()) - before
    names = sorted(p.name for p in written)
    assert any(".backup-" in n for n in names) and any(n.endswith(".lock") for n in names), names
    assert report in written
    for path in written:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path.name} is {oct(mode)}, the database 0o600"


# --- 7. demo --path ------------------------------------------------------------------------


@pytest.mark.process
def test_demo_refuses_to_overwrite_a_file_it_did_not_create(tmp_path: Path) -> None:
    existing = tmp_path / "bake_tracker_demo.sqlite"
    existing.write_bytes(b"the user's own file")
    notes = tmp_path / "bake_tracker_demo.sqlite.notes.txt"
    notes.write_text("my notes")
    result = cli("demo", "--path", str(tmp_path))
    assert result.code == EXIT_BAD_INPUT, result
    assert str(existing) in result.stderr, result
    assert len(result.stderr.strip().splitlines()) == 1, result
    assert existing.read_bytes() == b"the user's own file"
    assert notes.read_text() == "my notes"
    assert _listing(tmp_path) == sorted([existing.name, notes.name])


@pytest.mark.process
def test_demo_leaves_files_beside_its_database_alone(tmp_path: Path) -> None:
    notes = tmp_path / "bake_tracker_demo.sqlite.notes.txt"
    notes.write_text("my notes")
    result = cli("demo", "--path", str(tmp_path))
    assert result.code == EXIT_OK, result
    assert notes.read_text() == "my notes"


# --- 8. load-sample only into a new or empty database ---------------------------------------


@pytest.mark.process
def test_load_sample_refuses_a_database_with_foreign_tables(backend: Backend) -> None:
    engine = backend.make_engine()
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE inventory (id INTEGER PRIMARY KEY, label VARCHAR(20))")
        conn.exec_driver_sql("INSERT INTO inventory (id, label) VALUES (1, 'flour')")
    before = fingerprint.take(engine)
    content = backend.path.read_bytes() if backend.path else None
    engine.dispose()
    result = cli("load-sample", "--database-url", backend.cli_url)
    assert result.code == EXIT_BAD_INPUT, result
    assert "inventory" in result.stderr, result
    assert fingerprint.take(engine) == before
    with engine.connect() as conn:
        assert sa.inspect(conn).get_table_names() == ["inventory"]
    if content is not None:
        assert backend.path is not None and backend.path.read_bytes() == content


@pytest.mark.process
@pytest.mark.parametrize("content", [b"shopping list: flour, sugar\n" * 50, b"\x00" * 100])
def test_load_sample_refuses_a_file_that_is_not_a_sqlite_database(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    result = cli("load-sample", "--database-url", str(path))
    assert result.code == EXIT_BAD_INPUT, result
    assert len(result.stderr.strip().splitlines()) == 1, result
    assert path.read_bytes() == content
    assert _listing(tmp_path) == ["notes.db"]


# --- 9. numeric options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        ("plan", "--lock-timeout", "nan"),
        ("plan", "--lock-timeout", "inf"),
        ("plan", "--lock-timeout", "-inf"),
        ("plan", "--lock-timeout", "-1"),
        ("plan", "--lock-timeout", "1e400"),
        ("plan", "--lock-timeout", "1e30"),
        ("verify", "--lock-timeout", "NaN"),
        ("run", "--lock-timeout", "nan"),
        ("run", "--lock-timeout", "Infinity"),
        ("run", "--batch-size", "0"),
        ("run", "--batch-size", "-5"),
        ("run", "--batch-size", "1e3"),
        ("run", "--batch-size", "99999999"),
        ("run", "--batch-size", "nan"),
        ("rollback", "--lock-timeout", "inf"),
        ("rollback", "--batch-size", "10001"),
        ("upgrade-schema", "--lock-timeout", "nan"),
    ],
)
@pytest.mark.process
def test_a_bad_number_is_a_one_line_usage_error_and_nothing_is_written(
    sqlite_backend: Backend, command: str, option: str, value: str
) -> None:
    engine = sqlite_backend.make_engine()
    states.build_state("from_sample_data", engine)
    engine.dispose()
    assert sqlite_backend.path is not None
    directory = sqlite_backend.path.parent
    before = _listing(directory)
    content = sqlite_backend.path.read_bytes()
    result = cli(command, "--database-url", str(sqlite_backend.path), "--yes", option, value)
    if command in ("plan", "verify"):
        result = cli(command, "--database-url", str(sqlite_backend.path), option, value)
    assert result.code == EXIT_BAD_INPUT, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and "unexpected" not in lines[0], result
    assert _listing(directory) == before
    assert sqlite_backend.path.read_bytes() == content


# --- 10. passwords with an unencoded "@" -----------------------------------------------------

SECRET_PARTS = ("p@ss", "ss/w", "w#rd", "rd%", "w%23rd", "rd%25", "ss%2F")


def _no_secret(text: str) -> None:
    for part in SECRET_PARTS:
        assert part not in text, f"{part!r} of the password is shown:\n{text}"


@pytest.mark.process
@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_an_unencoded_at_in_a_password_is_never_shown(scheme: str) -> None:
    url = f"{scheme}://baker:p@ss/w#rd%@127.0.0.1:1/bakery"
    for command in (["plan"], ["verify"], ["run", "--yes"]):
        result = cli(*command, "--database-url", url)
        assert result.code == EXIT_BAD_INPUT, result
        _no_secret(result.stdout + result.stderr)
        assert "***" in result.stderr, result


@pytest.mark.process
@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_an_encoded_password_is_masked_in_connection_errors(scheme: str) -> None:
    url = f"{scheme}://baker:p%40ss%2Fw%23rd%25@127.0.0.1:1/bakery"
    result = cli("plan", "--database-url", url)
    assert result.code == EXIT_BAD_INPUT, result
    _no_secret(result.stdout + result.stderr)
    assert "baker:***@127.0.0.1:1/bakery" in result.stderr, result


@pytest.mark.process
def test_the_password_is_masked_in_the_plan_header_and_the_report_file(
    backend: Backend, build_state: Any, tmp_path: Path
) -> None:
    if backend.kind != "postgresql":
        pytest.skip("needs a server that accepts any password (the test PostgreSQL trusts)")
    build_state("from_sample_data")
    url = backend.url.set(password="p@ss/w#rd%").render_as_string(hide_password=False)
    planned = cli("plan", "--database-url", url)
    assert planned.code == EXIT_OK, planned
    _no_secret(planned.stdout + planned.stderr)
    assert ":***@" in planned.stdout
    report = tmp_path / "report.json"
    ran = cli("run", "--database-url", url, "--yes", "--backup-taken", "--report", str(report))
    assert ran.code == EXIT_OK, ran
    _no_secret(ran.stdout + ran.stderr + report.read_text())
    assert ":***@" in json.loads(report.read_text())["database"]


# --- 11. produced_at NULL --------------------------------------------------------------------


def relax_produced_at(engine: Engine) -> None:
    """Drop the NOT NULL of production_runs.produced_at, as a hand-edited schema would."""
    backend = engine.dialect.name
    with engine.begin() as conn:
        if backend == "postgresql":
            conn.exec_driver_sql(
                "ALTER TABLE production_runs ALTER COLUMN produced_at DROP NOT NULL"
            )
        elif backend in ("mysql", "mariadb"):
            conn.exec_driver_sql("ALTER TABLE production_runs MODIFY produced_at DATETIME NULL")
        else:
            sql = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'production_runs'"
            ).scalar_one()
            relaxed = sql.replace("produced_at DATETIME NOT NULL", "produced_at DATETIME")
            assert relaxed != sql, sql
            conn.exec_driver_sql("PRAGMA writable_schema = ON")
            conn.exec_driver_sql(
                "UPDATE sqlite_master SET sql = ? WHERE name = 'production_runs'", (relaxed,)
            )
            conn.exec_driver_sql("PRAGMA writable_schema = OFF")
    engine.dispose()


def test_a_run_without_produced_at_is_reported_not_given_an_invented_date(
    backend: Backend, build_state: Any
) -> None:
    info = build_state("from_sample_data")
    engine = backend.make_engine()
    relax_produced_at(engine)
    undated = sorted(info.to_migrate)[3]
    with engine.begin() as conn:
        conn.execute(
            sa.update(production_runs)
            .where(production_runs.c.id == undated)
            .values(produced_at=None)
        )
    url = backend.cli_url
    planned = main_in_process("plan", "--database-url", url, "--json").json
    assert planned["undated_run_ids"] == [undated]
    assert planned["undated"] == 1
    assert planned["to_migrate"] == len(info.to_migrate) - 1
    assert planned["total_runs"] == sum(
        planned[k]
        for k in ("already_linked", "to_migrate", "to_link_existing", "orphaned", "undated")
    )
    row = next(r for r in planned["per_recipe"] if r["recipe_id"] == info.run_recipe[undated])
    assert row["undated"] == 1

    result = main_in_process("run", "--database-url", url, "--yes", "--no-backup", "--json")
    assert result.code == EXIT_FAILED, result
    report = result.json
    assert report["undated_run_ids"] == [undated] and report["skipped_undated"] == 1, result
    assert report["migrated"] == len(info.to_migrate) - 1
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.select(recipe_snapshots.c.id).where(
                    recipe_snapshots.c.production_run_id == undated
                )
            ).all()
            == []
        )
    human = main_in_process("run", "--database-url", url, "--yes", "--no-backup")
    assert human.code == EXIT_FAILED and str(undated) in human.stdout, human
    verified = main_in_process("verify", "--database-url", url, "--json")
    assert verified.code == EXIT_FAILED
    assert [(p["kind"], p["run_id"]) for p in verified.json["problems"]] == [
        ("unlinked_run", undated)
    ], verified


@pytest.mark.parametrize("change", ["produced_at NULL", "another produced_at"])
def test_verify_reports_a_backfilled_snapshot_whose_date_is_not_its_runs(
    backend: Backend, build_state: Any, change: str
) -> None:
    info = build_state("from_sample_data")
    engine = backend.make_engine()
    assert (
        main_in_process("run", "--database-url", backend.cli_url, "--yes", "--no-backup").code
        == EXIT_OK
    )
    relax_produced_at(engine)
    run_id = sorted(info.to_migrate)[0]
    with engine.begin() as conn:
        conn.execute(
            sa.update(production_runs)
            .where(production_runs.c.id == run_id)
            .values(produced_at=None if change == "produced_at NULL" else sa.func.now())
        )
    result = main_in_process("verify", "--database-url", backend.cli_url, "--json")
    assert result.code == EXIT_FAILED, result
    assert [(p["kind"], p["run_id"]) for p in result.json["problems"]] == [
        ("backfill_snapshot_date", run_id)
    ], result
