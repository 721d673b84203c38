"""Whole-database fingerprints: digests first, rows read and compared only where they differ."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import sqlalchemy as sa

from snapshot_backfill.testing import fingerprint
from snapshot_backfill.testing.backends import Backend
from snapshot_backfill.testing.expectations import StateInfo

SET_NOTES = sa.text("UPDATE production_runs SET notes = :notes WHERE id = :id")


def _change_one_run(engine: sa.engine.Engine, run_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(SET_NOTES, {"notes": "a changed note", "id": run_id})


def test_a_fingerprint_without_rows_equals_one_with_them(
    backend: Backend, build_state: Callable[[str], StateInfo]
) -> None:
    info = build_state("partially_migrated")
    engine = backend.make_engine()
    full = fingerprint.take(engine)
    light = fingerprint.take(engine, keep_rows=False)
    assert light == full
    assert all(t.rows == () for t in light.tables.values())
    assert light.row_count("production_runs") == info.total_runs
    _change_one_run(engine, info.to_migrate[0])
    changed = fingerprint.take(engine, keep_rows=False)
    assert full.changed_tables(changed) == ["production_runs"]
    assert "rows were not kept" in light.diff(changed)


def test_two_databases_are_diffed_only_where_their_digests_differ(
    backend: Backend, state_templates: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = state_templates.restore(backend, "partially_migrated")
    copy = backend.sibling()
    state_templates.restore(copy, "partially_migrated")  # an exact copy of the same state
    engine, copy_engine = backend.make_engine(), copy.make_engine()
    assert fingerprint.diff_databases(engine, copy_engine) == ([], "(no difference)")
    run_id = info.to_migrate[0]
    _change_one_run(copy_engine, run_id)

    read_with_rows: list[str] = []
    real = fingerprint._read_image

    def spy(conn: Any, shape: Any, indexes: Any, keep_rows: bool) -> Any:
        if keep_rows:
            read_with_rows.append(shape.name)
        return real(conn, shape, indexes, keep_rows)

    monkeypatch.setattr(fingerprint, "_read_image", spy)
    changed, diff = fingerprint.diff_databases(engine, copy_engine)
    assert changed == ["production_runs"]
    assert read_with_rows == ["production_runs", "production_runs"]  # one per database
    assert f"~ id={run_id}: notes: " in diff and "-> 'a changed note'" in diff, diff
