"""The harness's background drops of server databases (``testing.backends``)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from snapshot_backfill.testing import backends

SERVER = make_url("postgresql+psycopg://nobody@127.0.0.1:1/none")


@pytest.fixture
def dropped(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names the background thread drops, recorded instead of sent to a server."""
    backends.wait_for_drops()  # the real drops of earlier tests are done first
    names: list[str] = []
    monkeypatch.setattr(backends, "_admin_connection", contextlib.nullcontext)

    def drop(conn: Any, kind: str, name: str) -> None:
        names.append(name)

    monkeypatch.setattr(backends, "_drop_server_database", drop)
    return names


def test_a_drop_is_done_by_the_time_the_wait_returns(dropped: list[str]) -> None:
    backends._dropper.submit(SERVER, "postgresql", "sbt_one")
    backends._dropper.submit(SERVER, "postgresql", "sbt_two")
    backends.wait_for_drops()
    assert dropped == ["sbt_one", "sbt_two"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_a_forked_child_drops_its_own_database_and_its_wait_ends(dropped: list[str]) -> None:
    # The parent's thread is waiting for work when the child is forked (as mutmut forks a
    # worker per mutant). The child's one drop must still be done, and its wait must end.
    backends._dropper.submit(SERVER, "postgresql", "sbt_parent")
    backends.wait_for_drops()
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        code = 3
        try:
            backends._dropper.submit(SERVER, "postgresql", "sbt_child")
            backends.wait_for_drops()
            code = 0 if dropped == ["sbt_parent", "sbt_child"] else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's wait for its drop never ended")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    # The parent's own queue is untouched by the child.
    backends._dropper.submit(SERVER, "postgresql", "sbt_parent_again")
    backends.wait_for_drops()
    assert dropped == ["sbt_parent", "sbt_parent_again"]
