"""Print a one-screen summary of a CI run from tox's junit files; exit 1 if an env did not run.

Usage: ``python .ci/summary.py WORK_DIR TESTS_RC BENCH_RC SECONDS``. A server env is skipped when
it did not run or its tests were skipped for want of a server (``coverage_gate.missing_envs``);
a Python env, when tox skipped it for want of its interpreter (no junit file). In CI every
backend and every supported Python must have run, whatever tox and the coverage env allowed.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from coverage_gate import SERVER_ENVS, missing_envs

PYTHON_ENVS = ("py39", "py310", "py311", "py312", "py313", "mindeps")


def main(work_dir: str, tests_rc: str, bench_rc: str, seconds: str) -> int:
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    print("\n==================== gate summary ====================")
    for junit in sorted(Path(work_dir).glob("junit-*.xml")):
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        tests = int(suite.get("tests", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        passed = tests - failed - skipped
        env = junit.stem[len("junit-") :]
        print(f"  {env:<20} {passed:>5} passed {failed:>4} failed {skipped:>4} skipped")
        totals["passed"] += passed
        totals["failed"] += failed
        totals["skipped"] += skipped
    print(f"  tox gate exit code: {tests_rc}; benchmark quick mode exit code: {bench_rc}")
    print(f"  wall time: {int(seconds) // 60} min {int(seconds) % 60} s")
    skipped_servers = {
        env: why for env, why in missing_envs(Path(work_dir)).items() if env in SERVER_ENVS
    }
    for env, why in skipped_servers.items():
        print(f"  FAIL: server env {env} {why}")
    skipped_pythons = [
        env for env in PYTHON_ENVS if not (Path(work_dir) / f"junit-{env}.xml").exists()
    ]
    for env in skipped_pythons:
        print(f"  FAIL: env {env} did not run (no interpreter for it)")
    print(f"{totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")
    return 1 if skipped_servers or skipped_pythons else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
