"""Print the mutation score of the last ``mutmut run``, per file, and its surviving mutants.

Run from the repository after ``mutmut run`` (``tox -e mutation`` does both)::

    python scripts/mutation_score.py                       # every mutant checked
    python scripts/mutation_score.py 'snapshot_backfill.backfill.x_rollback*'

The score is (killed + timeout) / checked, where checked is every mutant the run tested: a
mutant no test reaches ("no tests") counts against the score; mutants a narrowed run did not
test ("not checked") are counted apart, and lines marked ``# pragma: no mutate`` (equivalent
mutants, each with a comment saying why) make no mutant at all. Exit 0 always: the figure is
for people to read, not a gate.
"""

from __future__ import annotations

import fnmatch
import subprocess
import sys
from collections import Counter, defaultdict

KILLED = ("killed", "timeout")
NOT_CHECKED = ("not checked", "skipped")


def read_results() -> list[tuple[str, str]]:
    """(mutant name, status) of every mutant mutmut knows, from ``mutmut results --all``."""
    output = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    results = []
    for line in output.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name.startswith("snapshot_backfill."):
            results.append((name, status))
    return results


def module_of(mutant: str) -> str:
    """``snapshot_backfill.backfill.x_run__mutmut_3`` -> ``snapshot_backfill.backfill``."""
    return mutant.split(".x")[0] if ".x" in mutant else mutant.rsplit(".", 1)[0]


def score(counts: Counter[str]) -> tuple[int, int, float]:
    checked = sum(n for status, n in counts.items() if status not in NOT_CHECKED)
    killed = sum(counts[s] for s in KILLED)
    return killed, checked, (100.0 * killed / checked) if checked else 0.0


def main(patterns: list[str]) -> int:
    results = [
        (name, status)
        for name, status in read_results()
        if not patterns or any(fnmatch.fnmatch(name, p) for p in patterns)
    ]
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    for name, status in results:
        by_module[module_of(name)][status] += 1
    total: Counter[str] = Counter()
    for module in sorted(by_module):
        counts = by_module[module]
        total.update(counts)
        killed, checked, percent = score(counts)
        detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"{module}: {percent:.1f}% ({killed} of {checked} checked killed; {detail})")
    killed, checked, percent = score(total)
    print(f"mutation score: {percent:.1f}% ({killed} killed or timed out of {checked} checked)")
    for status in ("survived", "no tests", "suspicious", "segfault"):
        names = [n for n, s in results if s == status]
        if names:
            print(f"{status} ({len(names)}):")
            for name in names:
                print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
