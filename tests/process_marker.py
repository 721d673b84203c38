"""The ``process`` marker, kept true: a test that starts a process and lacks it fails.

The tests that start processes (the CLI as a user runs it, a migrator killed part-way, pytest
in another project) are four fifths of the SQLite suite's time, and what they add is the
operating system's part: signals, file locks, exit codes, a terminal. tox runs them on one
Python per backend (``py311`` and the server envs) and leaves them out on the others, which run
the rest of the suite, the code those processes drive included, in process (tox.ini). That is
only safe while every such test is marked, so an unmarked test that starts one fails, naming
the command.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

MARKER = "process"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}: starts a process; tox runs these on one Python per backend (tox.ini)",
    )


@pytest.fixture(autouse=True)
def _processes_are_marked(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker(MARKER) is not None:
        yield
        return
    started: list[Any] = []
    original = subprocess.Popen.__init__

    def recording_init(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        started.append(args[0] if args else kwargs.get("args"))
        original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", recording_init)
        yield
    if started:
        pytest.fail(
            f"this test starts a process ({started[0]!r}) but is not marked "
            f"@pytest.mark.{MARKER}; the envs that leave such tests out would still run it "
            "(tests/process_marker.py)",
            pytrace=False,
        )
