"""The battery run for the plugin's tests: on a scratch copy, with titled failure messages.

``run_on_copy(url)`` copies the database (``scratch.scratch_copy``: the source is only read),
reads what the copy holds (``expectations.observe``), runs ``battery.run_battery`` on the copy
and, right after the battery's run, the harness's checks of what the run wrote (content and
flags of every backfilled snapshot, orphans and existing snapshots) on the same copy. Where a
check about digests fails, the copy is diffed row by row against the source at that moment
(``fingerprint.diff_databases``, only the tables whose digest differs). The copy is removed
before it returns; the ``BatteryRun`` keeps every finding and, for a failed one, a message
titled with the check and the context: database, backend, run ids, fingerprint diff.

No test-only dependency: a command may run it from a base install.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from sqlalchemy.engine import URL, Engine

import snapshot_backfill.testing.battery as battery
from snapshot_backfill import backfill
from snapshot_backfill.database import display_url, open_engine
from snapshot_backfill.testing.battery import Finding
from snapshot_backfill.testing.expectations import StateInfo, observe
from snapshot_backfill.testing.fingerprint import diff_databases, explain
from snapshot_backfill.testing.invariants import check_backfilled_content, check_links_after_run
from snapshot_backfill.testing.scratch import scratch_copy

CONTENT_AND_FLAGS = "content_and_flags"
ORPHANS_AND_LINKS = "orphans_and_existing_snapshots"
# The harness's checks, run on the copy right after the battery's run.
AFTER_RUN = "run_matches_plan"
CHECKS = (
    *battery.CHECKS[: battery.CHECKS.index(AFTER_RUN) + 1],
    CONTENT_AND_FLAGS,
    ORPHANS_AND_LINKS,
    *battery.CHECKS[battery.CHECKS.index(AFTER_RUN) + 1 :],
)
# How the invariants' messages name runs ("snapshot 9 of run 3", "run 12: ...").
_RUN_IDS = re.compile(r"\bruns? (\d+)\b")
# Checks that compare digests with the start: a failure is shown as a diff against the source.
DIFFED = ("plan_is_pure", "rollback_restores_start")


@dataclass
class BatteryRun:
    """Every finding of one battery run on a copy, and what a failure message says."""

    source: str
    backend: str
    scratch: str = ""
    holds: str = ""
    findings: dict[str, Finding] = field(default_factory=dict)
    diffs: dict[str, str] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    stopped: Optional[str] = None

    def context(self, check: str) -> dict[str, Any]:
        finding = self.findings.get(check)
        run_ids = list(finding.run_ids) if finding is not None else []
        return {
            "state": f"a scratch copy of {self.source}",
            "backend": self.backend,
            "holds": self.holds or "(not read)",
            "run ids": run_ids or "none named",
        }

    def failure(self, check: str) -> Optional[str]:
        """The titled message of a failed (or never reached) check; None if it held."""
        finding = self.findings.get(check)
        if finding is not None and finding.ok:
            return None
        if finding is None:
            why = self.stopped or "the battery ended before this check"
            return explain(f"battery check {check}: not run", self.context(check), reason=why)
        blocks = {"found": finding.detail}
        if check in self.diffs:
            blocks["fingerprint_diff_source_to_copy"] = self.diffs[check]
        return explain(f"battery check {check} failed", self.context(check), **blocks)


def run_on_copy(
    source_url: URL, *, scratch_url: Optional[URL] = None, batch_size: Optional[int] = None
) -> BatteryRun:
    """Run the battery on a scratch copy of ``source_url``'s database (which is only read)."""
    source = open_engine(source_url)
    result = BatteryRun(source=display_url(source_url), backend=source.dialect.name)
    try:
        with scratch_copy(source, scratch_url=scratch_url) as scratch:
            result.scratch = scratch.display
            copy = open_engine(scratch.url)
            try:
                _run(source, copy, result, batch_size)
            finally:
                copy.dispose()
    finally:
        source.dispose()
    return result


def _run(source: Engine, copy: Engine, result: BatteryRun, batch_size: Optional[int]) -> None:
    size = batch_size if batch_size is not None else backfill.DEFAULT_BATCH_SIZE
    info = observe(copy, f"a scratch copy of {result.source}", batch_size=size)
    result.holds = info.summary()

    def on_check(finding: Finding) -> None:
        result.findings[finding.check] = finding
        if not finding.ok and finding.check in DIFFED:
            _, result.diffs[finding.check] = diff_databases(
                source, copy, tables=battery.data_tables(copy)
            )
        if finding.check == AFTER_RUN:
            for check, invariant in (
                (CONTENT_AND_FLAGS, check_backfilled_content),
                (ORPHANS_AND_LINKS, check_links_after_run),
            ):
                result.findings[check] = _harness_check(check, invariant, copy, info)

    options = {} if batch_size is None else {"batch_size": batch_size}
    try:
        ran = battery.run_battery(copy, on_check=on_check, **options)
    except Exception as exc:  # reported by every check not reached, with what stopped it
        result.stopped = f"the battery stopped: {type(exc).__name__}: {exc}"
        return
    result.timings = ran.timings


def _harness_check(check: str, invariant: Any, copy: Engine, info: StateInfo) -> Finding:
    try:
        invariant(copy, info, {})  # the context is the BatteryRun's, said once
    except AssertionError as exc:
        named = sorted({int(n) for n in _RUN_IDS.findall(str(exc))})
        return Finding(check, False, str(exc), tuple(named[: battery.MAX_RUN_IDS]))
    return Finding(check, True, "held")
