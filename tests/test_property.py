"""Property-based: the invariants hold for any history Hypothesis can make up (SQLite).

A generated history (``blueprint.Blueprint``) has recipes with any text, yields and lines (some
ingredients missing), variants and archived recipes, and runs of every kind in any order: plain,
linked to the application's snapshot or an earlier backfill's, with a dangling snapshot row, of
a recipe deleted with foreign keys off. What the backfill must do follows from the kinds alone
(``Blueprint.expectations``), never from the migrator's code.

Examples are bounded (a few dozen per property, each a small SQLite file) so CI stays fast;
``deadline=None`` because a database round trip is not a unit of CPU time. The settings are the
profile ``snapshot-backfill``; ``SNAPSHOT_BACKFILL_HYPOTHESIS_PROFILE=snapshot-backfill-no-shrink``
skips shrinking (for runs expected to fail, e.g. against a planted bug).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from snapshot_backfill import backfill
from snapshot_backfill.models import Base
from snapshot_backfill.testing import factories as f
from snapshot_backfill.testing import fingerprint
from snapshot_backfill.testing.backends import Backend, provision
from snapshot_backfill.testing.blueprint import (
    RUN_KINDS,
    Blueprint,
    RecipeSpec,
    RunSpec,
    build_blueprint,
)
from snapshot_backfill.testing.expectations import StateInfo
from snapshot_backfill.testing.fingerprint import assert_same, explain
from snapshot_backfill.testing.invariants import (
    check_backfilled_content,
    check_links_after_run,
    check_plan,
    check_rollback_report,
    check_run_report,
    check_verify,
    check_writes,
)
from snapshot_backfill.testing.running import rollback_backfill, run_backfill, sqlite_files

settings.register_profile(
    "snapshot-backfill",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# For mutation testing (many runs expected to fail): report the first failure, don't shrink it.
settings.register_profile(
    "snapshot-backfill-no-shrink",
    settings.get_profile("snapshot-backfill"),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
PROFILE_VAR = "SNAPSHOT_BACKFILL_HYPOTHESIS_PROFILE"
EXAMPLES = settings(settings.get_profile(os.environ.get(PROFILE_VAR, "snapshot-backfill")))

# Any text a recipe could hold, surrogates (not encodable) and NUL (not in SQLite TEXT) aside.
texts = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12
)
dates = st.datetimes(min_value=datetime(2019, 1, 1), max_value=datetime(2026, 12, 31))


@st.composite
def blueprints(draw: st.DrawFn) -> Blueprint:
    """A random history: up to 6 recipes, 6 ingredients and 24 runs, with deletions."""
    ingredient_ids = list(range(1, draw(st.integers(0, 6)) + 1))
    bp = Blueprint(ingredient_ids=ingredient_ids)
    for rid in range(1, draw(st.integers(0, 6)) + 1):
        lines = (
            draw(
                st.lists(
                    st.tuples(
                        st.sampled_from(ingredient_ids),
                        st.sampled_from(f.QUANTITIES),
                        st.sampled_from(f.UNITS),
                        st.none() | texts,
                    ),
                    max_size=4,
                )
            )
            if ingredient_ids
            else []
        )
        bp.recipes.append(
            RecipeSpec(
                id=rid,
                name=draw(texts.filter(bool)),
                archived=draw(st.booleans()),
                base_recipe_id=draw(st.none() | st.integers(1, rid - 1)) if rid > 1 else None,
                variant_name=draw(st.none() | texts),
                production_ready=draw(st.booleans()),
                yield_quantity=draw(st.sampled_from((1.0, 2.5, 12.0, 0.1, 1e6))),
                notes=draw(st.none() | texts),
                lines=lines,
            )
        )
    recipe_ids = [r.id for r in bp.recipes]
    if recipe_ids:
        runs = draw(
            st.lists(
                st.tuples(st.sampled_from(recipe_ids), st.sampled_from(RUN_KINDS), dates),
                max_size=24,
            )
        )
        bp.runs = [RunSpec(i, rid, when, kind) for i, (rid, kind, when) in enumerate(runs, 1)]
        bp.deleted_recipe_ids = set(draw(st.lists(st.sampled_from(recipe_ids), max_size=3)))
    if ingredient_ids:
        bp.deleted_ingredient_ids = set(draw(st.lists(st.sampled_from(ingredient_ids), max_size=2)))
    return bp


@pytest.fixture(scope="module")
def empty_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A SQLite file with our six tables, copied for each example (faster than DDL)."""
    with provision("sqlite", None, tmp_path_factory.mktemp("schema")) as backend:
        engine = backend.make_engine()
        Base.metadata.create_all(engine)
        engine.dispose()
        assert backend.path is not None
        yield backend.path


@contextlib.contextmanager
def generated(
    empty_schema: Path, bp: Blueprint, batch_size: int
) -> Iterator[tuple[Backend, Engine, StateInfo]]:
    """The blueprint in a fresh SQLite file of its own; yields its backend, engine, expectations."""
    # Nested, not one "with (...)": Python 3.9 is supported.
    with tempfile.TemporaryDirectory() as directory:  # noqa: SIM117
        with provision("sqlite", None, Path(directory)) as backend:
            assert backend.path is not None
            shutil.copyfile(empty_schema, backend.path)
            engine = backend.make_engine()
            info = build_blueprint(engine, bp, "generated", batch_size=batch_size)
            engine.dispose()
            yield backend, engine, info


def _where(info: StateInfo) -> dict[str, str]:
    return {"state": "generated (see the Falsifying example above)", "holds": info.summary()}


@EXAMPLES
@given(bp=blueprints(), batch_size=st.integers(1, 9))
def test_dry_run_is_exact_and_pure_for_any_history(
    empty_schema: Path, bp: Blueprint, batch_size: int
) -> None:
    with generated(empty_schema, bp, batch_size) as (backend, engine, info):
        assert backend.path is not None
        files = sqlite_files(backend.path)
        before = fingerprint.take(engine)
        check_plan(backfill.plan(engine), info, _where(info))
        check_verify(
            backfill.verify(engine),
            info,
            _where(info),
            after_run=False,
            snapshots=len(info.snapshot_ids),
        )
        assert_same(before, fingerprint.take(engine), "plan/verify wrote", _where(info))
        engine.dispose()
        assert sqlite_files(backend.path) == files, "plan/verify changed the file's bytes"


@EXAMPLES
@given(bp=blueprints(), batch_size=st.integers(1, 9))
def test_run_is_exact_complete_and_idempotent_for_any_history(
    empty_schema: Path, bp: Blueprint, batch_size: int
) -> None:
    with generated(empty_schema, bp, batch_size) as (_, engine, info):
        where = _where(info)
        before = fingerprint.take(engine)
        report = run_backfill(engine, info)
        after = fingerprint.take(engine)

        check_run_report(report, info, where)
        check_writes(before, after, info, where)
        check_backfilled_content(engine, info, where)
        check_links_after_run(engine, info, where)
        check_verify(
            backfill.verify(engine),
            info,
            where,
            after_run=True,
            snapshots=len(info.snapshot_ids) + len(info.to_migrate),
        )
        again = run_backfill(engine, info)
        assert again.migrated == again.linked_existing == 0, explain(
            "a second run found work", where, report=again.to_dict()
        )
        assert_same(after, fingerprint.take(engine), "the second run wrote", where)


@EXAMPLES
@given(bp=blueprints(), batch_size=st.integers(1, 9))
def test_rollback_restores_any_history(empty_schema: Path, bp: Blueprint, batch_size: int) -> None:
    with generated(empty_schema, bp, batch_size) as (_, engine, info):
        before = fingerprint.take(engine)
        run_backfill(engine, info)
        report = rollback_backfill(engine, info)
        check_rollback_report(report, info, _where(info))
        assert_same(before, fingerprint.take(engine), "rollback did not restore", _where(info))


class InjectedCrash(Exception):
    """Raised from on_progress: the process dies right after batch k committed."""


@EXAMPLES
@given(bp=blueprints(), batch_size=st.integers(1, 5), k=st.integers(1, 6))
def test_interrupted_run_resumes_to_the_same_state_for_any_history(
    empty_schema: Path, bp: Blueprint, batch_size: int, k: int
) -> None:
    with generated(empty_schema, bp, batch_size) as (backend, engine, info):
        assert backend.path is not None
        reference = backend.sibling()
        assert reference.path is not None
        shutil.copyfile(backend.path, reference.path)
        reference_engine = reference.make_engine()
        run_backfill(reference_engine, info)

        def crash(progress: backfill.Progress) -> None:
            if progress.batches == k:
                raise InjectedCrash

        with contextlib.suppress(InjectedCrash):
            run_backfill(engine, info, on_progress=crash)
        run_backfill(engine, info)

        assert_same(
            fingerprint.take(reference_engine, normalized=True),
            fingerprint.take(engine, normalized=True),
            "interrupted + resumed differs from uninterrupted",
            {**_where(info), "crash after batch": k, "batch size": batch_size},
        )
