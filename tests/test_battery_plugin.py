"""The invariant battery through the plugin, as a user runs it: ``pytest --pyargs
snapshot_backfill.testing --snapshot-backfill-url URL`` in a folder of its own, on every backend.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from snapshot_backfill.testing.backends import MARIADB, POSTGRESQL, Backend
from snapshot_backfill.testing.digest import table_digests

# Every test here starts a process (tox.ini: the py311 and server envs run these).
pytestmark = pytest.mark.process

# The battery's checks come with testing.battery and testing.scratch.
CHECKS = pytest.importorskip("snapshot_backfill.testing.battery_run").CHECKS

# What the migrator cannot get right: the database rewrites what it inserts.
SCALE_FACTOR_TRIGGER = {
    "sqlite": [
        "CREATE TRIGGER rewrite_scale_factor AFTER INSERT ON recipe_snapshots BEGIN "
        "UPDATE recipe_snapshots SET scale_factor = 2.5 WHERE id = NEW.id; END"
    ],
    POSTGRESQL: [
        "CREATE FUNCTION rewrite_scale_factor() RETURNS trigger AS $$ "
        "BEGIN NEW.scale_factor := 2.5; RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER rewrite_scale_factor BEFORE INSERT ON recipe_snapshots "
        "FOR EACH ROW EXECUTE FUNCTION rewrite_scale_factor()",
    ],
    MARIADB: [
        "CREATE TRIGGER rewrite_scale_factor BEFORE INSERT ON recipe_snapshots "
        "FOR EACH ROW SET NEW.scale_factor = 2.5"
    ],
}


def _load_sample(backend: Backend) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "snapshot_backfill",
            "load-sample",
            "--database-url",
            backend.cli_url,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _battery(folder: Path, url: str, *options: str) -> subprocess.CompletedProcess[str]:
    """The battery as a user runs it, in an empty folder of theirs."""
    (folder / "pytest.ini").write_text("[pytest]\n")
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--pyargs"]
    return subprocess.run(
        [*command, "snapshot_backfill.testing", "--snapshot-backfill-url", url, *options],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_the_battery_passes_on_a_sample_database_and_never_writes_it(
    backend: Backend, tmp_path: Path
) -> None:
    _load_sample(backend)
    engine = backend.make_engine()
    before = table_digests(engine)
    done = _battery(tmp_path, backend.cli_url, "-v", "--snapshot-backfill-batch-size", "7")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(CHECKS)} passed" in done.stdout, done.stdout
    assert table_digests(engine) == before


@pytest.mark.slow
def test_the_battery_fails_clearly_where_the_migrator_cannot_be_right(
    backend: Backend, tmp_path: Path
) -> None:
    _load_sample(backend)
    engine = backend.make_engine()
    with engine.begin() as conn:
        for statement in SCALE_FACTOR_TRIGGER[backend.kind]:
            conn.exec_driver_sql(statement)
    before = table_digests(engine)
    done = _battery(tmp_path, backend.cli_url, "-v", "--snapshot-backfill-batch-size", "7")
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "FAILED" in out and "test_battery[content_and_flags]" in out, out
    assert "battery check content_and_flags failed" in out, out
    assert "scale_factor: 2.5, expected 1.0" in out, out
    assert f"backend: {engine.dialect.name}" in out, out
    assert table_digests(engine) == before


def test_a_url_that_cannot_be_one_is_a_usage_error(tmp_path: Path) -> None:
    done = _battery(tmp_path, "postgresql://u:p@ss@db/x")
    assert done.returncode == 4, done.stdout + done.stderr  # pytest's usage error
    assert "ERROR: --snapshot-backfill-url: invalid database URL: postgresql://u:***@" in (
        done.stderr
    ), done.stderr
    assert "p@ss" not in done.stdout + done.stderr


def test_a_missing_database_fails_every_check_saying_so(tmp_path: Path) -> None:
    missing = tmp_path / "nothere.db"
    done = _battery(tmp_path, str(missing))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"the battery cannot run on {missing}: no SQLite database at {missing}" in done.stdout
    assert f"{len(CHECKS)} error" in done.stdout, done.stdout
    assert not missing.exists()
