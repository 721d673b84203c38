"""The harness as a package: what a base install (no ``[testing]`` extra) can import."""

from __future__ import annotations

import subprocess
import sys

import pytest

TEST_ONLY = ("pytest", "_pytest", "factory", "faker", "hypothesis", "pluggy")
# A finder first on sys.meta_path that refuses the test-only packages, as if not installed.
BLOCK = f"""
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {TEST_ONLY!r}:
            raise ImportError(f"{{name}} is not installed (blocked)")
        return None

sys.meta_path.insert(0, Blocked())
"""


def _import(module: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", f"{BLOCK}\nimport {module}\nprint('imported')"],
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


@pytest.mark.parametrize(
    "module", ["snapshot_backfill.testing.factories", "snapshot_backfill.testing.plugin"]
)
def test_the_blocker_really_blocks_the_test_only_modules(module: str) -> None:
    done = _import(module)
    assert done.returncode != 0 and "is not installed (blocked)" in done.stderr, done.stderr
