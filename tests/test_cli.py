"""The command-line contract: commands, JSON keys, exit codes, confirmation, backup, reports."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
from sqlalchemy.engine import URL

from snapshot_backfill import __version__
from snapshot_backfill.cli import main
from snapshot_backfill.database import open_engine
from snapshot_backfill.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_LOCKED, EXIT_OK
from snapshot_backfill.locking import migration_lock
from snapshot_backfill.models import pre_snapshot_metadata
from snapshot_backfill.sample_data import LoadReport, load_sample_file
from snapshot_backfill.testing import fingerprint

REPO = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    """Standard input that says it is a terminal, with the user's answer already typed."""

    def isatty(self) -> bool:
        return True


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.exit_code = code
        self.stdout = stdout
        self.stderr = stderr

    @property
    def output(self) -> str:
        return f"exit {self.exit_code}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"

    def json(self) -> Any:
        return json.loads(self.stdout)


def cli(*argv: str, stdin: Optional[io.StringIO] = None) -> Result:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, stdin=stdin or io.StringIO(""))
    return Result(code, out.getvalue(), err.getvalue())


class Sample:
    """A SQLite file loaded from the bundled sample data, with what the loader expects."""

    def __init__(self, path: Path, report: LoadReport) -> None:
        self.path = path
        self.report = report
        assert report.expected is not None
        self.expected = report.expected

    @property
    def url(self) -> str:
        return str(self.path)

    def fingerprint(self, path: Optional[Path] = None) -> fingerprint.Fingerprint:
        engine = open_engine(URL.create("sqlite", database=str(path or self.path)))
        try:
            return fingerprint.take(engine)
        finally:
            engine.dispose()

    def siblings(self) -> list[Path]:
        return sorted(p for p in self.path.parent.iterdir() if p != self.path)


@pytest.fixture
def sample(tmp_path: Path) -> Sample:
    path = tmp_path / "bake.sqlite"
    report = load_sample_file(URL.create("sqlite", database=str(path)))
    return Sample(path, report)


def test_plan_json_counts_add_up_to_the_sample(sample: Sample) -> None:
    before = sample.path.read_bytes()
    result = cli("plan", "--database-url", sample.url, "--json")
    assert result.exit_code == EXIT_OK, result.output
    plan = result.json()
    expected = sample.expected
    assert plan["total_runs"] == expected.total_runs
    assert plan["already_linked"] == expected.already_linked
    assert plan["to_link_existing"] == expected.link_existing
    assert plan["to_migrate"] == expected.to_migrate
    assert plan["orphaned_run_ids"] == sorted(sample.report.orphaned_run_ids)
    assert (
        plan["already_linked"] + plan["to_link_existing"] + plan["to_migrate"] + plan["orphaned"]
        == plan["total_runs"]
    )
    assert sum(r["total_runs"] for r in plan["per_recipe"]) == plan["total_runs"]
    assert sample.path.read_bytes() == before
    assert sample.siblings() == [], "plan must not leave files next to the database"


def test_plan_for_a_human_names_the_orphans(sample: Sample) -> None:
    result = cli("plan", "--database-url", sample.url)
    assert result.exit_code == EXIT_OK, result.output
    orphans = ", ".join(str(i) for i in sorted(sample.report.orphaned_run_ids))
    assert f"orphaned run ids: {orphans}" in result.stdout
    assert "Dry run: nothing was changed." in result.stdout
    assert "(deleted)" in result.stdout


def test_the_database_url_can_come_from_the_environment(
    sample: Sample, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNAPSHOT_BACKFILL_DATABASE_URL", sample.url)
    result = cli("plan", "--json")
    assert result.exit_code == EXIT_OK, result.output
    assert result.json()["total_runs"] == sample.expected.total_runs


def test_run_without_a_terminal_and_without_yes_refuses(sample: Sample) -> None:
    before = sample.path.read_bytes()
    result = cli("run", "--database-url", sample.url)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "pass --yes" in result.stderr
    assert sample.path.read_bytes() == before
    assert sample.siblings() == []


@pytest.mark.parametrize("answer", ["n\n", "\n", "whatever\n"])
def test_a_prompt_answered_no_changes_nothing(sample: Sample, answer: str) -> None:
    before = sample.path.read_bytes()
    result = cli("run", "--database-url", sample.url, stdin=Terminal(answer))
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "[y/N]" in result.stderr
    assert "aborted" in result.stderr
    assert sample.path.read_bytes() == before


def test_a_prompt_answered_yes_runs(sample: Sample) -> None:
    result = cli("run", "--database-url", sample.url, "--no-backup", stdin=Terminal("y\n"))
    assert result.exit_code == EXIT_OK, result.output
    assert f"Migrated {sample.expected.to_migrate}," in result.stdout


def test_run_backs_up_first_then_backfills_and_reports(sample: Sample, tmp_path: Path) -> None:
    before = sample.fingerprint()
    report_path = tmp_path / "report.json"
    result = cli("run", "--database-url", sample.url, "--yes", "--report", str(report_path))
    assert result.exit_code == EXIT_OK, result.output

    backups = [p for p in sample.siblings() if ".backup-" in p.name]
    assert len(backups) == 1, sample.siblings()
    assert str(backups[0]) in result.stdout
    fingerprint.assert_same(before, sample.fingerprint(backups[0]), "the backup is the pre-run db")

    report = json.loads(report_path.read_text())
    assert report["migrated"] == sample.expected.to_migrate
    assert report["linked_existing"] == sample.expected.link_existing
    assert report["skipped_orphans"] == sample.expected.orphaned
    assert report["orphaned_run_ids"] == sorted(sample.report.orphaned_run_ids)
    assert report["errors"] == []
    assert report["tool_version"] == __version__
    assert report["database"] == sample.url
    assert report["duration_s"] >= 0


def test_run_json_is_one_object_with_the_contract_keys(sample: Sample) -> None:
    result = cli("run", "--database-url", sample.url, "--yes", "--no-backup", "--json")
    assert result.exit_code == EXIT_OK, result.output
    report = result.json()
    for key in (
        "total_runs",
        "already_linked",
        "to_migrate",
        "to_link_existing",
        "orphaned_run_ids",
        "migrated",
        "linked_existing",
        "skipped_orphans",
        "errors",
        "duration_s",
    ):
        assert key in report, key
    assert report["migrated"] == report["to_migrate"]
    assert report["linked_existing"] == report["to_link_existing"]
    assert sample.siblings() == [p for p in sample.siblings() if p.name.endswith(".lock")]


def test_no_backup_and_explicit_backup_path(sample: Sample, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "copy.sqlite"
    target.parent.mkdir()
    result = cli("run", "--database-url", sample.url, "--yes", "--backup", str(target))
    assert result.exit_code == EXIT_OK, result.output
    assert target.is_file()
    assert not [p for p in sample.siblings() if ".backup-" in p.name]


def test_an_existing_backup_file_is_never_overwritten(sample: Sample, tmp_path: Path) -> None:
    target = tmp_path / "taken.sqlite"
    target.write_text("precious")
    before = sample.path.read_bytes()
    result = cli("run", "--database-url", sample.url, "--yes", "--backup", str(target))
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "already exists" in result.stderr
    assert target.read_text() == "precious"
    assert sample.path.read_bytes() == before


def test_second_run_changes_nothing_and_exits_zero(sample: Sample) -> None:
    assert cli("run", "--database-url", sample.url, "--yes", "--no-backup").exit_code == EXIT_OK
    after_first = sample.fingerprint()
    result = cli("run", "--database-url", sample.url, "--yes", "--no-backup", "--json")
    assert result.exit_code == EXIT_OK, result.output
    assert result.json()["migrated"] == 0
    assert result.json()["linked_existing"] == 0
    fingerprint.assert_same(after_first, sample.fingerprint(), "a second run changed the db")


def test_verify_fails_before_and_passes_after(sample: Sample) -> None:
    before = cli("verify", "--database-url", sample.url, "--json")
    assert before.exit_code == EXIT_FAILED, before.output
    problems = before.json()["problems"]
    unlinked = {p["run_id"] for p in problems if p["kind"] == "unlinked_run"}
    assert len(unlinked) == sample.expected.to_migrate + sample.expected.link_existing
    assert before.json()["ok"] is False

    human = cli("verify", "--database-url", sample.url)
    assert human.exit_code == EXIT_FAILED
    assert "PROBLEM unlinked_run" in human.stdout

    assert cli("run", "--database-url", sample.url, "--yes", "--no-backup").exit_code == EXIT_OK
    after = cli("verify", "--database-url", sample.url, "--json")
    assert after.exit_code == EXIT_OK, after.output
    assert after.json() == {**after.json(), "ok": True, "problems": [], "problems_total": 0}
    assert after.json()["orphaned_run_ids"] == sorted(sample.report.orphaned_run_ids)


def test_rollback_restores_the_database(sample: Sample) -> None:
    before = sample.fingerprint()
    assert cli("run", "--database-url", sample.url, "--yes", "--no-backup").exit_code == EXIT_OK
    result = cli("rollback", "--database-url", sample.url, "--yes", "--no-backup", "--json")
    assert result.exit_code == EXIT_OK, result.output
    undone = result.json()
    assert undone["snapshots_deleted"] == sample.expected.to_migrate
    assert undone["runs_unlinked"] == sample.expected.to_migrate + sample.expected.link_existing
    fingerprint.assert_same(before, sample.fingerprint(), "run + rollback must restore the db")
    assert cli("verify", "--database-url", sample.url).exit_code == EXIT_FAILED


def test_rollback_asks_too(sample: Sample) -> None:
    assert cli("run", "--database-url", sample.url, "--yes", "--no-backup").exit_code == EXIT_OK
    after_run = sample.path.read_bytes()
    result = cli("rollback", "--database-url", sample.url)
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert sample.path.read_bytes() == after_run


def test_quiet_prints_nothing(sample: Sample) -> None:
    result = cli("run", "--database-url", sample.url, "--yes", "--no-backup", "--quiet")
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout == ""
    assert result.stderr == ""


def test_progress_lines_without_a_terminal(sample: Sample) -> None:
    result = cli("run", "--database-url", sample.url, "--yes", "--no-backup", "--batch-size", "7")
    assert result.exit_code == EXIT_OK, result.output
    work = sample.expected.to_migrate + sample.expected.link_existing
    assert f"{work}/{work} runs" in result.stderr


def test_a_failing_row_is_isolated_reported_and_exits_one(sample: Sample, tmp_path: Path) -> None:
    with sqlite3.connect(sample.path) as conn:
        victim = conn.execute(
            "SELECT r.id FROM production_runs r JOIN recipes c ON c.id = r.recipe_id "
            "WHERE r.recipe_snapshot_id IS NULL AND NOT EXISTS "
            "(SELECT 1 FROM recipe_snapshots s WHERE s.production_run_id = r.id) "
            "ORDER BY r.id LIMIT 1 OFFSET 3"
        ).fetchone()[0]
        conn.execute(
            "CREATE TRIGGER refuse_one BEFORE INSERT ON recipe_snapshots "
            f"WHEN NEW.production_run_id = {victim} "
            "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
        )
    conn.close()
    report_path = tmp_path / "report.json"
    result = cli(
        "run",
        "--database-url",
        sample.url,
        "--yes",
        "--no-backup",
        "--batch-size",
        "5",
        "--report",
        str(report_path),
    )
    assert result.exit_code == EXIT_FAILED, result.output
    report = json.loads(report_path.read_text())
    assert report["errors"] == [{"run_id": victim, "error": "refused by a trigger"}]
    assert report["migrated"] == sample.expected.to_migrate - 1
    assert f"run {victim}: refused by a trigger" in result.stdout
    verify = cli("verify", "--database-url", sample.url, "--json").json()
    assert [p["run_id"] for p in verify["problems"]] == [victim]


def test_a_database_that_refuses_everything_stops_the_run(sample: Sample) -> None:
    with sqlite3.connect(sample.path) as conn:
        conn.execute(
            "CREATE TRIGGER refuse_all BEFORE INSERT ON recipe_snapshots "
            "BEGIN SELECT RAISE(ABORT, 'no more snapshots'); END"
        )
    conn.close()
    before = sample.fingerprint()
    result = cli("run", "--database-url", sample.url, "--yes", "--no-backup", "--batch-size", "5")
    assert result.exit_code == EXIT_FAILED, result.output
    assert "every run of a batch failed" in result.stderr
    assert "no more snapshots" in result.stderr
    fingerprint.assert_same(before, sample.fingerprint(), "nothing linked: no journal either")


def test_another_migrator_holding_the_lock_exits_three(sample: Sample) -> None:
    before = sample.fingerprint()
    engine = open_engine(URL.create("sqlite", database=str(sample.path)))
    try:
        with migration_lock(engine, timeout=1):
            result = cli(
                "run", "--database-url", sample.url, "--yes", "--no-backup", "--lock-timeout", "0.3"
            )
    finally:
        engine.dispose()
    assert result.exit_code == EXIT_LOCKED, result.output
    assert "another snapshot-backfill is working on" in result.stderr
    assert "--lock-timeout" in result.stderr
    fingerprint.assert_same(before, sample.fingerprint(), "the loser must change nothing")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--batch-size", "0"], "must be at least 1"),
        (["run", "--batch-size", "ten"], "not a whole number"),
        (["run", "--batch-size", "100000", "--yes"], "between 1 and"),
        (["plan", "--lock-timeout", "-1"], "must not be negative"),
        (["run", "--backup", "x", "--no-backup"], "not allowed with argument"),
        (["frobnicate"], "invalid choice"),
        (["run", "--yes", "--report", "/nonexistent/dir/report.json"], "does not exist"),
    ],
)
def test_bad_options_exit_two_and_change_nothing(
    sample: Sample, argv: list[str], message: str
) -> None:
    before = sample.path.read_bytes()
    result = (
        cli(*argv[:1], "--database-url", sample.url, *argv[1:])
        if argv[0] != "frobnicate"
        else cli(*argv)
    )
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sample.path.read_bytes() == before


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = cli("--debug", "plan", "--database-url", str(tmp_path / "missing.sqlite"))
    assert result.exit_code == EXIT_BAD_INPUT
    assert "Traceback" in result.stderr
    assert "does not exist" in result.stderr


def test_version_and_help() -> None:
    assert cli("--version").exit_code == 0
    assert cli("run", "--help").exit_code == 0


def test_load_sample_then_refuse_to_load_again(tmp_path: Path) -> None:
    path = tmp_path / "fresh.sqlite"
    first = cli("load-sample", "--database-url", str(path))
    assert first.exit_code == EXIT_OK, first.output
    assert "production_runs:" in first.stdout
    before = path.read_bytes()
    again = cli("load-sample", "--database-url", str(path))
    assert again.exit_code == EXIT_BAD_INPUT, again.output
    assert path.read_bytes() == before


def test_load_sample_with_a_malformed_file_leaves_no_database(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "3.6", "application": "bake-tracker", "recipes": [}')
    path = tmp_path / "never.sqlite"
    result = cli("load-sample", "--database-url", str(path), "--sample", str(bad))
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert str(bad) in result.stderr
    assert not path.exists()


def test_demo_runs_the_whole_story(tmp_path: Path) -> None:
    result = cli("demo", "--path", str(tmp_path / "demo"))
    assert result.exit_code == EXIT_OK, result.output
    for step in ("== plan", "== run", "== run again (changes nothing)", "== verify", "Verify OK"):
        assert step in result.stdout
    assert "Migrated 0, linked to existing 0" in result.stdout


def _script(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "migrate_production_snapshots.py"), *argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


@pytest.mark.process
def test_the_work_package_script_keeps_its_interface(sample: Sample) -> None:
    before = sample.path.read_bytes()
    dry = _script("--dry-run", "--database-url", sample.url)
    assert dry.returncode == EXIT_OK, dry.stderr
    assert "Dry run: nothing was changed." in dry.stdout
    assert sample.path.read_bytes() == before

    refused = _script("--database-url", sample.url)
    assert refused.returncode == EXIT_BAD_INPUT, refused.stderr
    assert sample.path.read_bytes() == before

    assert _script("--verify", "--database-url", sample.url).returncode == EXIT_FAILED
    done = _script("--yes", "--database-url", sample.url)
    assert done.returncode == EXIT_OK, done.stderr
    assert f"Migrated {sample.expected.to_migrate}," in done.stdout
    assert _script("--verify", "--database-url", sample.url).returncode == EXIT_OK


@pytest.mark.process
def test_python_dash_m_is_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "snapshot_backfill", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert __version__ in result.stdout


@pytest.fixture
def old_sample(tmp_path: Path) -> Sample:
    """The sample data in a database of before the snapshot feature."""
    path = tmp_path / "old.sqlite"
    report = load_sample_file(
        URL.create("sqlite", database=str(path)), metadata=pre_snapshot_metadata()
    )
    return Sample(path, report)


def test_upgrade_schema_dry_run_prints_the_sql_and_changes_nothing(old_sample: Sample) -> None:
    before = old_sample.path.read_bytes()
    result = cli("upgrade-schema", "--database-url", old_sample.url, "--dry-run")
    assert result.exit_code == EXIT_OK, result.output
    assert "CREATE TABLE recipe_snapshots" in result.stdout
    assert "BEGIN IMMEDIATE;" in result.stdout
    assert "nothing was changed" in result.stdout
    assert old_sample.path.read_bytes() == before
    assert old_sample.siblings() == []


def test_upgrade_schema_asks_backs_up_upgrades_and_then_has_nothing_to_do(
    old_sample: Sample,
) -> None:
    before = old_sample.path.read_bytes()
    refused = cli("upgrade-schema", "--database-url", old_sample.url)
    assert refused.exit_code == EXIT_BAD_INPUT, refused.output
    assert old_sample.path.read_bytes() == before

    done = cli("upgrade-schema", "--database-url", old_sample.url, "--yes", "--json")
    assert done.exit_code == EXIT_OK, done.output
    document = done.json()
    assert "table recipe_snapshots" in document["missing"]
    assert document["steps_executed"] == len(document["steps"]) > 0
    assert [p for p in old_sample.siblings() if ".backup-" in p.name]

    again = cli("upgrade-schema", "--database-url", old_sample.url)
    assert again.exit_code == EXIT_OK, again.output
    assert "already has the snapshot schema: nothing to do" in again.stdout

    plan = cli("plan", "--database-url", old_sample.url, "--json")
    assert plan.exit_code == EXIT_OK, plan.output
    assert plan.json()["to_migrate"] == old_sample.expected.to_migrate
    assert plan.json()["orphaned_run_ids"] == sorted(old_sample.report.orphaned_run_ids)


def test_demo_from_the_old_schema_shows_the_full_path(tmp_path: Path) -> None:
    result = cli("demo", "--path", str(tmp_path / "demo"), "--from-old-schema")
    assert result.exit_code == EXIT_OK, result.output
    for step in ("== upgrade-schema --dry-run", "== upgrade-schema", "== plan", "Verify OK"):
        assert step in result.stdout
