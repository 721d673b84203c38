"""The pytest plugin, as another project meets it: a pytest process in a folder of its own."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

# Every test here starts a process (tox.ini: the py311 and server envs run these).
pytestmark = pytest.mark.process

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Use the harness in your own tests"
UNRELATED = """
import pytest

@pytest.fixture
def engine():
    return "the project's own engine"

def test_one(engine):
    assert engine == "the project's own engine"

def test_two():
    pass
"""


def _pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m pytest`` in ``folder``: no conftest, no ini file, this project's plugin."""
    (folder / "pytest.ini").write_text("[pytest]\n")  # the rootdir, not the repository's
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _example() -> str:
    """The README's copy-pasteable test file."""
    text = README.read_text()
    section = text[text.index(SECTION) :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python example under {SECTION!r} in README.md"
    return match.group(1)


def test_the_plugin_changes_nothing_in_another_projects_run(tmp_path: Path) -> None:
    (tmp_path / "test_unrelated.py").write_text(UNRELATED)
    with_plugin = _pytest(tmp_path, "-v")
    without = _pytest(tmp_path, "-v", "-p", "no:snapshot_backfill")
    assert with_plugin.returncode == 0, with_plugin.stdout + with_plugin.stderr
    assert "snapshot_backfill" in _pytest(tmp_path, "--trace-config").stdout  # it is loaded
    collected = [line for line in with_plugin.stdout.splitlines() if "::" in line]
    assert collected == [line for line in without.stdout.splitlines() if "::" in line]
    assert "2 passed" in with_plugin.stdout
    assert "snapshot-backfill battery" not in with_plugin.stdout  # no report header either


def test_without_a_url_the_battery_is_not_collected(tmp_path: Path) -> None:
    done = _pytest(tmp_path, "--pyargs", "snapshot_backfill.testing")
    assert done.returncode == 5, done.stdout + done.stderr  # pytest's "no tests collected"
    assert "no tests ran" in done.stdout


def test_pytest_help_lists_the_options(tmp_path: Path) -> None:
    done = _pytest(tmp_path, "--help")
    for option in (
        "--snapshot-backfill-url=URL",
        "--snapshot-backfill-scratch-url=URL",
        "--snapshot-backfill-batch-size=N",
    ):
        assert option in done.stdout, done.stdout


def test_the_readme_example_runs_without_a_conftest(tmp_path: Path) -> None:
    (tmp_path / "test_snapshot_backfill.py").write_text(_example())
    done = _pytest(tmp_path, "-q")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout, done.stdout


OVERRIDDEN = """
import pytest

@pytest.fixture
def snapshot_backfill_url(tmp_path):
    return str(tmp_path / "mine.db")  # a string works as well as a URL

def test_the_state_goes_where_the_url_says(snapshot_backfill_state, snapshot_backfill_engine,
                                           tmp_path):
    info = snapshot_backfill_state("already_migrated")
    assert (tmp_path / "mine.db").is_file()
    assert info.to_migrate == () and info.already_linked

def test_a_state_that_cannot_exist_is_skipped(snapshot_backfill_state):
    snapshot_backfill_state("no_such_state")
"""


def test_the_url_fixture_can_be_overridden(tmp_path: Path) -> None:
    (tmp_path / "test_override.py").write_text(OVERRIDDEN)
    done = _pytest(tmp_path, "-q", "-rA")
    assert "1 passed" in done.stdout and "1 failed" in done.stdout, done.stdout + done.stderr
    assert "no state 'no_such_state'; the states are: empty" in done.stdout, done.stdout


@pytest.mark.parametrize("state", ["real_schema"])
def test_a_state_that_cannot_be_built_there_is_skipped_with_the_reason(
    tmp_path: Path, state: str
) -> None:
    (tmp_path / "test_skip.py").write_text(
        "def test_it(snapshot_backfill_state, monkeypatch):\n"
        "    from snapshot_backfill.testing import states\n"
        "    monkeypatch.setattr(states, 'APP_SCHEMA', states.APP_SCHEMA.with_name('absent.sql'))\n"
        f"    snapshot_backfill_state({state!r})\n"
    )
    done = _pytest(tmp_path, "-q", "-rs")
    assert "1 skipped" in done.stdout, done.stdout + done.stderr
    assert "absent.sql is absent" in done.stdout, done.stdout
