"""The check behind the ``process`` marker finds an unmarked test that starts a process."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

SPAWNS = """
import subprocess
import sys

import pytest

{marker}
def test_spawns():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

def test_stays_in_process():
    assert True
"""


# The inner session's process is started from this one.
@pytest.mark.process
def test_an_unmarked_test_that_starts_a_process_fails_naming_the_marker(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(SPAWNS.format(marker=""))
    result = pytester.runpytest("-p", "process_marker")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*this test starts a process*not marked @pytest.mark.process*"])


@pytest.mark.process
def test_a_marked_test_that_starts_a_process_passes_and_can_be_left_out(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(SPAWNS.format(marker="@pytest.mark.process"))
    pytester.runpytest("-p", "process_marker", "--strict-markers").assert_outcomes(passed=2)
    left_out = pytester.runpytest("-p", "process_marker", "-m", "not process")
    left_out.assert_outcomes(passed=1, deselected=1)
