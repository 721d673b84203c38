"""What a run's batches send the database: a fixed number of bound parameters, whatever the size.

A batch names its runs in three places (the snapshots to create, the runs to journal and link,
the runs linked to an existing snapshot). Bound as one parameter per run, a batch of 2,000 sends
6,000 parameters: ~10 ms a batch to expand and parse (benchmarks/README.md), and past SQLite's
host-parameter limit (999 before SQLite 3.32) an error. On SQLite and PostgreSQL each list is one
parameter (a JSON array, an array); MariaDB and MySQL keep the IN list, which they turn into a
join themselves, so there the count grows with the batch by design.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from snapshot_backfill import backfill
from snapshot_backfill.testing.backends import Backend


@contextmanager
def largest_parameter_count(engine: Engine) -> Iterator[list[int]]:
    """The most parameters any one statement on ``engine`` bound while the block ran."""
    largest = [0]

    def count(_conn: Any, _cursor: Any, _sql: str, parameters: Any, _ctx: Any, many: bool) -> None:
        rows = parameters if many else [parameters]
        largest[0] = max([largest[0], *(len(row or ()) for row in rows)])

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        yield largest
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)


def test_a_batch_binds_as_many_parameters_when_it_is_a_hundred_times_larger(
    backend: Backend, build_state: Any
) -> None:
    if backend.kind == "mariadb":
        pytest.skip("MariaDB and MySQL keep the IN list: their count grows with the batch")
    counts = {}
    for size in (2, 200):
        info = build_state("from_sample_data")
        engine = backend.make_engine()
        assert len(info.work) > 20, "a large batch names many runs, a small one two"
        with largest_parameter_count(engine) as largest:
            report = backfill.run(engine, batch_size=size)
        assert report.ok and report.migrated == len(info.to_migrate), report
        assert report.linked_existing == len(info.to_link_existing), report
        counts[size] = largest[0]
        engine.dispose()
    assert counts[200] == counts[2], counts
