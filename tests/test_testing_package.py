"""The harness as a package: what a base install (no ``[testing]`` extra) can import."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Every test here starts a process (tox.ini: the py311 and server envs run these).
pytestmark = pytest.mark.process

TEST_ONLY = ("pytest", "_pytest", "pluggy", "factory", "faker", "hypothesis")
# What pytest loads the plugin with when only pytest is there (no [testing] extra).
HARNESS_ONLY = ("factory", "faker", "hypothesis")
# A finder first on sys.meta_path that refuses some packages, as if they were not installed.
BLOCK = """
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is not installed (blocked)")
        return None

sys.meta_path.insert(0, Blocked())
"""


def _import(module: str, blocked: tuple[str, ...] = TEST_ONLY) -> subprocess.CompletedProcess[str]:
    block = BLOCK.format(blocked=blocked)
    return subprocess.run(
        [sys.executable, "-c", f"{block}\nimport {module}\nprint('imported')"],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "module",
    [
        "snapshot_backfill.testing",
        "snapshot_backfill.testing.digest",
        "snapshot_backfill.testing.expectations",
        "snapshot_backfill.testing.fingerprint",
        "snapshot_backfill.testing.invariants",
        "snapshot_backfill.testing.appschema",
    ],
)
def test_a_base_install_imports_the_modules_a_command_may_use(module: str) -> None:
    done = _import(module)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr


def test_pytest_loads_the_plugin_without_the_testing_extra() -> None:
    done = _import("snapshot_backfill.testing.plugin", blocked=HARNESS_ONLY)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr


@pytest.mark.parametrize(
    ("module", "blocked"),
    [
        ("snapshot_backfill.testing.factories", TEST_ONLY),
        ("snapshot_backfill.testing.states", HARNESS_ONLY),
        ("snapshot_backfill.testing.plugin", TEST_ONLY),
    ],
)
def test_the_blocker_really_blocks_the_test_only_modules(
    module: str, blocked: tuple[str, ...]
) -> None:
    done = _import(module, blocked)
    assert done.returncode != 0 and "is not installed (blocked)" in done.stderr, done.stderr
