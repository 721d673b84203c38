"""Rehearse the backfill on a scratch copy of the user's own database: verdict and timings.

``rehearse(source)`` never writes the source: it checks the schema, removes the scratch copies
killed rehearsals left (``testing.scratch.clean_leftovers``), copies what the backfill touches
into a scratch database, runs the battery on the copy (``testing.battery``), removes the copy,
and returns a ``Rehearsal``: each check's finding, the time of each phase, the longest batch
(how long the application would wait on a write lock with this batch size), runs per second,
the run's projected duration on the source, and a batch size to use if the longest batch
exceeds the target. The verdict is ``go`` when every check held.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from . import backfill
from .database import display_url, open_engine, read_only
from .errors import BadInputError
from .schema_check import require_schema
from .testing.battery import BatteryResult, Finding, run_battery
from .testing.scratch import Leftover, Scratch, clean_leftovers, scratch_copy

DEFAULT_MAX_BATCH_SECONDS = 1.0
# A recommended batch size aims this far under the target: batch times vary.
_HEADROOM = 0.8


@dataclass
class Rehearsal:
    """What a rehearsal found and measured."""

    source: str
    backend: str
    batch_size: int
    max_batch_seconds: float
    scratch: Optional[Scratch] = None
    leftovers: list[Leftover] = field(default_factory=list)
    battery: BatteryResult = field(default_factory=BatteryResult)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.battery.findings) and self.battery.ok

    @property
    def verdict(self) -> str:
        return "go" if self.ok else "no-go"

    @property
    def work(self) -> int:
        plan = self.battery.plan
        return plan.work if plan is not None else 0

    @property
    def longest_batch_s(self) -> Optional[float]:
        run = self.battery.run
        return run.longest_batch_s if run is not None and run.batches else None

    @property
    def runs_per_s(self) -> Optional[float]:
        run = self.battery.run
        if run is None or not run.duration_s:
            return None
        linked = run.migrated + run.linked_existing
        return linked / run.duration_s if linked else None

    @property
    def projected_run_s(self) -> Optional[float]:
        """The source's run at the copy's speed: its plan, then its work at runs/s."""
        rate = self.runs_per_s
        if rate is None:
            return None
        return self.timings.get("plan", 0.0) + self.work / rate

    @property
    def recommended_batch_size(self) -> Optional[int]:
        """A batch size whose longest batch stays under the target, if this one's did not."""
        longest = self.longest_batch_s
        run = self.battery.run
        if longest is None or run is None or longest <= self.max_batch_seconds:
            return None
        largest = min(self.batch_size, max(1, self.work))
        return max(1, math.floor(largest * self.max_batch_seconds / longest * _HEADROOM))

    def to_dict(self) -> dict[str, Any]:
        run = self.battery.run
        plan = self.battery.plan
        return {
            "verdict": self.verdict,
            "source": self.source,
            "backend": self.backend,
            "scratch": None
            if self.scratch is None
            else {
                "kind": self.scratch.kind,
                "name": self.scratch.name,
                "tables": self.scratch.tables,
                "rows_copied": self.scratch.rows_copied,
                "triggers": self.scratch.triggers,
                "removed": True,
            },
            "leftovers": [vars(leftover) for leftover in self.leftovers],
            "checks": [f.to_dict() for f in self.battery.findings],
            "failed": [f.to_dict() for f in self.battery.failed],
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "plan": None if plan is None else plan.to_dict(),
            "run": None if run is None else run.to_dict(),
            "batch_size": self.batch_size,
            "max_batch_seconds": self.max_batch_seconds,
            "longest_batch_s": _rounded(self.longest_batch_s),
            "runs_per_s": _rounded(self.runs_per_s, 1),
            "projected_run_s": _rounded(self.projected_run_s),
            "recommended_batch_size": self.recommended_batch_size,
        }

    def to_markdown(self) -> str:
        """A summary a CI job can post on a review."""
        icon = "✅" if self.ok else "❌"
        lines = [
            f"## snapshot-backfill rehearsal: {icon} **{self.verdict}**",
            "",
            f"Source `{self.source}` ({self.backend}), rehearsed on a scratch copy"
            + (
                f" ({self.scratch.rows_copied} rows of {len(self.scratch.tables)} tables, "
                f"{len(self.scratch.triggers)} triggers), removed afterwards."
                if self.scratch is not None
                else "."
            ),
            "",
            "| check | result | detail | run ids |",
            "|---|---|---|---|",
        ]
        for f in self.battery.findings:
            ids = ", ".join(str(i) for i in f.run_ids)
            lines.append(
                f"| {f.check} | {'ok' if f.ok else '**FAIL**'} | {_cell(f.detail)} | {ids} |"
            )
        lines += ["", "| measure | value |", "|---|---|"]
        for name, value in self.measures():
            lines.append(f"| {name} | {value} |")
        lines += ["", "| phase | seconds |", "|---|---|"]
        lines += [f"| {phase} | {seconds:.3f} |" for phase, seconds in self.timings.items()]
        return "\n".join(lines) + "\n"

    def measures(self) -> list[tuple[str, str]]:
        """The headline figures, as (name, text) pairs for a human."""
        plan = self.battery.plan
        found = [("runs to link", str(self.work) if plan is not None else "unknown")]
        found.append(("batch size", str(self.batch_size)))
        longest = self.longest_batch_s
        found.append(
            (
                "longest batch (write lock)",
                "no batch ran"
                if longest is None
                else f"{longest:.3f} s (target {self.max_batch_seconds:g} s)",
            )
        )
        if self.recommended_batch_size is not None:
            found.append(("recommended --batch-size", str(self.recommended_batch_size)))
        rate = self.runs_per_s
        found.append(("runs per second", "n/a" if rate is None else f"{rate:,.0f}"))
        projected = self.projected_run_s
        found.append(
            ("projected run on the source", "n/a" if projected is None else f"{projected:.1f} s")
        )
        return found


def _rounded(value: Optional[float], digits: int = 3) -> Optional[float]:
    return None if value is None else round(value, digits)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _same_database(a: URL, b: URL) -> bool:
    keys = ("host", "port", "database")
    return a.get_backend_name() == b.get_backend_name() and all(
        getattr(a, k) == getattr(b, k) for k in keys
    )


def rehearse(
    source: Engine,
    *,
    scratch_url: Optional[URL] = None,
    batch_size: int = backfill.DEFAULT_BATCH_SIZE,
    max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
    on_phase: Optional[Callable[[str], None]] = None,
    on_check: Optional[Callable[[Finding], None]] = None,
    on_leftover: Optional[Callable[[Leftover], None]] = None,
) -> Rehearsal:
    """Rehearse the backfill on a scratch copy of ``source``; the source is only read.

    Raises SchemaMissingError (a pre-snapshot database: ``upgrade-schema`` first) and
    BadInputError (an unusable scratch) before anything is copied.
    """
    if not 1 <= batch_size <= backfill.MAX_BATCH_SIZE:
        raise BadInputError(
            f"--batch-size must be between 1 and {backfill.MAX_BATCH_SIZE}, not {batch_size}"
        )
    if not (math.isfinite(max_batch_seconds) and max_batch_seconds > 0):
        raise BadInputError(f"--max-batch-seconds must be above 0, not {max_batch_seconds}")
    if scratch_url is not None and _same_database(scratch_url, source.url):
        raise BadInputError("--scratch-url names the source database: give another, empty one")
    result = Rehearsal(
        source=display_url(source.url),
        backend=source.dialect.name,
        batch_size=batch_size,
        max_batch_seconds=max_batch_seconds,
    )
    with read_only(source) as conn:
        require_schema(conn)
    result.leftovers = clean_leftovers(source, scratch_url)
    for leftover in result.leftovers:
        if on_leftover is not None:
            on_leftover(leftover)
    if on_phase is not None:
        on_phase("copy")
    started = time.monotonic()
    with scratch_copy(source, scratch_url=scratch_url) as scratch:
        result.scratch = scratch
        result.timings["copy"] = time.monotonic() - started
        if on_phase is not None:
            on_phase("battery")
        engine = open_engine(scratch.url, poolclass=sa.pool.NullPool)
        try:
            result.battery = run_battery(engine, batch_size=batch_size, on_check=on_check)
        finally:
            engine.dispose()
        result.timings.update(result.battery.timings)
        removing = time.monotonic()
    result.timings["cleanup"] = time.monotonic() - removing
    return result
