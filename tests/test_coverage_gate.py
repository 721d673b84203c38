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
        if env != "py311-postgresql":  # not run
            junit(tmp_path, env)
    junit(tmp_path, "py311-mariadb", "no mariadb server: SNAPSHOT_BACKFILL_TEST_SERVERS=none")
    missing = gate.missing_envs(tmp_path)
    assert set(missing) == {"py311-postgresql", "py311-mariadb"}
    assert missing["py311-postgresql"].startswith("did not run")
    assert missing["py311-mariadb"] == "1 tests skipped: no mariadb server"
    assert gate.bar_for(missing) == 95 - gate.SERVER_ALLOWANCE[frozenset(gate.SERVER_ENVS)]
    assert (
        gate.bar_for({"py311-mariadb": ""})
        == 95 - gate.SERVER_ALLOWANCE[frozenset({"py311-mariadb"})]
    )
    assert gate.bar_for(missing) < gate.bar_for({"py311-postgresql": ""}) < 95


def test_without_py311_the_gate_fails_saying_why(
    gate: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The other Pythons ran, but the tests that start processes ran nowhere on SQLite.
    for env in ("py39", "py310", "py312", "py313", "py311-postgresql", "py311-mariadb"):
        junit(tmp_path, env)
    assert gate.main(tmp_path) == 1
    assert "py311 did not run" in capsys.readouterr().err


@pytest.fixture
def summary(gate: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(GATE.parent))  # it imports coverage_gate, beside it
    spec = importlib.util.spec_from_file_location("summary", GATE.parent / "summary.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ci_fails_when_any_python_or_server_env_did_not_run(
    summary: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for env in (*summary.PYTHON_ENVS, *summary.SERVER_ENVS):
        junit(tmp_path, env)
    assert summary.main(str(tmp_path), "0", "0", "61") == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "wall time: 1 min 1 s" in out
    (tmp_path / "junit-py310.xml").unlink()
    assert summary.main(str(tmp_path), "0", "0", "61") == 1
    assert "FAIL: env py310 did not run" in capsys.readouterr().out
    junit(tmp_path, "py310")
    junit(tmp_path, "py311-postgresql", "no postgresql server: none here")
    assert summary.main(str(tmp_path), "0", "0", "61") == 1
    assert "FAIL: server env py311-postgresql 1 tests skipped" in capsys.readouterr().out
