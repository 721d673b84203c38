"""Print a one-screen summary of a CI run from tox's junit files and coverage report."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main(work_dir: str, tests_rc: str, bench_rc: str, seconds: str) -> None:
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    print("\n==================== gate summary ====================")
    for junit in sorted(Path(work_dir).glob("junit-*.xml")):
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        tests = int(suite.get("tests", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        passed = tests - failed - skipped
        env = junit.stem.removeprefix("junit-")
        print(f"  {env:<20} {passed:>5} passed {failed:>4} failed {skipped:>4} skipped")
        totals["passed"] += passed
        totals["failed"] += failed
        totals["skipped"] += skipped
    print(f"  tox gate exit code: {tests_rc}; benchmark quick mode exit code: {bench_rc}")
    print(f"  wall time: {int(seconds) // 60} min {int(seconds) % 60} s")
    print(f"{totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")


if __name__ == "__main__":
    main(*sys.argv[1:5])
