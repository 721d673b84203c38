"""The naive baseline: the work package's ORM loop, one query per run, one transaction.

Run as a child process by bench_backfill.py: ``python naive.py URL``; prints one JSON line.
It is WP04's ``migrate_production_snapshots`` (load every unlinked run, look its recipe up,
build the payload from the ORM objects, add and flush a snapshot, set the link, commit once at
the end) with the one change needed to do the same job as the migrator on our data: a run
whose snapshot row already exists is linked to it instead of failing on the UNIQUE key.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from sqlalchemy.orm import Session

from snapshot_backfill.database import open_engine, resolve_url
from snapshot_backfill.models import ProductionRun, Recipe, RecipeSnapshot, utc_now


def _create_backfill_snapshot(run: Any, recipe: Any, session: Session) -> RecipeSnapshot:
    recipe_data = {
        "name": recipe.name,
        "category": recipe.category,
        "source": recipe.source,
        "yield_quantity": recipe.yield_quantity,
        "yield_unit": recipe.yield_unit,
        "yield_description": recipe.yield_description,
        "estimated_time_minutes": recipe.estimated_time_minutes,
        "notes": recipe.notes,
        "variant_name": getattr(recipe, "variant_name", None),
        "is_production_ready": recipe.is_production_ready,
    }
    ingredients_data = [
        {
            "ingredient_id": ri.ingredient_id,
            "ingredient_name": ri.ingredient.display_name if ri.ingredient else "Unknown",
            "ingredient_slug": (ri.ingredient.slug or "") if ri.ingredient else "",
            "quantity": float(ri.quantity),
            "unit": ri.unit,
            "notes": ri.notes,
        }
        for ri in recipe.recipe_ingredients
    ]
    snapshot = RecipeSnapshot(
        recipe_id=recipe.id,
        production_run_id=run.id,
        scale_factor=1.0,
        snapshot_date=run.produced_at or utc_now(),
        recipe_data=json.dumps(recipe_data),
        ingredients_data=json.dumps(ingredients_data),
        is_backfilled=True,
    )
    session.add(snapshot)
    session.flush()
    return snapshot


def migrate(url_text: str) -> dict[str, int]:
    stats = {"migrated": 0, "linked": 0, "skipped_no_recipe": 0}
    engine = open_engine(resolve_url(url_text))
    with Session(engine) as session:
        runs = session.query(ProductionRun).filter(ProductionRun.recipe_snapshot_id.is_(None)).all()
        for run in runs:
            recipe = session.query(Recipe).filter_by(id=run.recipe_id).first()
            if not recipe:
                stats["skipped_no_recipe"] += 1
                continue
            existing = session.query(RecipeSnapshot).filter_by(production_run_id=run.id).first()
            if existing is not None:
                run.recipe_snapshot_id = existing.id
                stats["linked"] += 1
                continue
            snapshot = _create_backfill_snapshot(run, recipe, session)
            run.recipe_snapshot_id = snapshot.id
            stats["migrated"] += 1
            stats["linked"] += 1
        session.commit()
    engine.dispose()
    return stats


def main(url_text: str) -> int:
    started = time.perf_counter()
    stats = migrate(url_text)
    print(json.dumps({**stats, "seconds": round(time.perf_counter() - started, 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
