"""The coverage gate (.ci/coverage_gate.py) names the envs a run lacks, lowers the bar by them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

GATE = Path(__file__).resolve().parents[1] / ".ci" / "coverage_gate.py"


@pytest.fixture(scope="module")
def gate() -> Any:
    if not GATE.exists():
        pytest.skip(f"{GATE} is absent: the gate's scripts live in the repository, not the sdist")
    spec = importlib.util.spec_from_file_location("coverage_gate", GATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def junit(directory: Path, env: str, *skip_messages: str) -> None:
    skipped = "".join(
        f'<testcase name="t{i}"><skipped type="pytest.skip" message="{m}"/></testcase>'
        for i, m in enumerate(skip_messages)
    )
    (directory / f"junit-{env}.xml").write_text(
        f'<testsuites><testsuite name="pytest" tests="3">{skipped}'
        '<testcase name="ran"/></testsuite></testsuites>'
    )


def test_the_full_matrix_keeps_the_full_bar(gate: Any, tmp_path: Path) -> None:
    for env in gate.MATRIX:
        junit(tmp_path, env, "the application's full schema is SQLite DDL (SQLite only)")
    assert gate.missing_envs(tmp_path) == {}
    assert gate.bar_for({}) == 95


def test_a_server_env_that_skipped_for_want_of_a_server_is_missing(
    gate: Any, tmp_path: Path
) -> None:
    for env in gate.MATRIX:
        if env != "py310":  # no Python 3.10 here
            junit(tmp_path, env)
    junit(tmp_path, "py311-mariadb", "no mariadb server: SNAPSHOT_BACKFILL_TEST_SERVERS=none")
    missing = gate.missing_envs(tmp_path)
    assert set(missing) == {"py310", "py311-mariadb"}
    assert missing["py311-mariadb"] == "1 tests skipped: no mariadb server"
    assert gate.bar_for(missing) == 95 - gate.SERVER_ALLOWANCE[frozenset({"py311-mariadb"})]
    both = {"py311-postgresql": "", "py311-mariadb": ""}
    assert gate.bar_for(both) < gate.bar_for({"py311-postgresql": ""}) < 95


def test_without_any_python_env_the_gate_fails(gate: Any, tmp_path: Path) -> None:
    junit(tmp_path, "py311-postgresql")
    assert gate.main(tmp_path) == 1
