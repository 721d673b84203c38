"""Hold the gate's coverage bar: 95% for the full matrix, a documented lower bar for a partial run.

Usage (tox's ``coverage`` env, after ``coverage combine``): ``python .ci/coverage_gate.py WORK_DIR``

The full matrix is every env of ``MATRIX`` with its tests run. An env is missing when its junit
file is absent (tox skipped it: no such interpreter here) or, for a server env, when its tests
were skipped for want of a server (their skip reason starts ``no <kind> server:``). A run with
envs missing says which, and is held to the full bar less each missing env's allowance: how
much the full matrix's coverage drops without that env (``ALLOWANCE``, measured, rounded up).
Nothing missing: ``fail_under`` of pyproject.toml (95), unchanged. Nothing ran at all: fail.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

FULL_BAR = 95.0
PYTHON_ENVS = ("py39", "py310", "py311", "py312", "py313")
SERVER_ENVS = {"py311-postgresql": "postgresql", "py311-mariadb": "mariadb"}
MATRIX = (*PYTHON_ENVS, *SERVER_ENVS)
# Percentage points the full matrix's combined coverage loses without the env (README "Testing").
ALLOWANCE = {
    "py39": 0.5,
    "py310": 0.5,
    "py311": 0.5,
    "py312": 0.5,
    "py313": 0.5,
    "py311-postgresql": 2.0,
    "py311-mariadb": 2.0,
}


def skipped_for_want_of_server(junit: Path, kind: str) -> int:
    """How many tests in ``junit`` were skipped because no ``kind`` server could be had."""
    prefix = f"no {kind} server:"
    root = ET.parse(junit).getroot()
    return sum(
        1 for skipped in root.iter("skipped") if (skipped.get("message") or "").startswith(prefix)
    )


def missing_envs(work_dir: Path) -> dict[str, str]:
    """Each env of the matrix that did not run, with why."""
    missing = {}
    for env in MATRIX:
        junit = work_dir / f"junit-{env}.xml"
        if not junit.exists():
            missing[env] = "did not run (no interpreter, or not asked for)"
        elif env in SERVER_ENVS:
            kind = SERVER_ENVS[env]
            count = skipped_for_want_of_server(junit, kind)
            if count:
                missing[env] = f"{count} tests skipped: no {kind} server"
    return missing


def bar_for(missing: dict[str, str]) -> float:
    """The bar a run is held to: the full bar less the allowance of each missing env."""
    return FULL_BAR - sum(ALLOWANCE[env] for env in missing)


def main(work_dir: Path) -> int:
    missing = missing_envs(work_dir)
    if len(missing) == len(MATRIX):
        print("coverage gate: no env of the matrix ran; nothing to measure", file=sys.stderr)
        return 1
    bar = bar_for(missing)
    if missing:
        print("coverage gate: PARTIAL matrix; missing envs:")
        for env, why in missing.items():
            print(f"  {env}: {why} (allowance {ALLOWANCE[env]} points)")
        print(f"coverage gate: bar lowered from {FULL_BAR:g}% to {bar:g}% for what ran")
    else:
        print(f"coverage gate: full matrix; bar {FULL_BAR:g}%")
    return subprocess.call(
        [sys.executable, "-m", "coverage", "report", f"--fail-under={bar:g}"],
    )


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
