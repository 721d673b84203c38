"""Small sample data documents the sample-data suites start from and break one way at a time."""

from __future__ import annotations

from typing import Any


def minimal_document() -> dict[str, Any]:
    """Build a small valid sample that uses every part of the format once."""
    return {
        "version": "3.6",
        "exported_at": "2025-01-06T18:30:00Z",
        "application": "bake-tracker",
        "ingredients": [
            {"display_name": "All-purpose flour", "slug": "flour_all_purpose", "category": "Flour"},
            {"display_name": "Butter, unsalted", "slug": "butter_unsalted", "category": "Fats"},
        ],
        "recipes": [
            {
                "name": "Shortbread",
                "slug": "shortbread",
                "category": "Cookies",
                "ingredients": [
                    {"ingredient_slug": "flour_all_purpose", "quantity": 2.0, "unit": "cup"},
                    {"ingredient_slug": "butter_unsalted", "quantity": 1.0, "unit": "cup"},
                ],
            },
            {"name": "Plain Scones", "category": "Breads", "ingredients": []},
        ],
        "finished_units": [
            {
                "slug": "shortbread_wedge",
                "recipe_slug": "shortbread",
                "display_name": "Shortbread Wedge",
                "yield_mode": "discrete_count",
                "items_per_batch": 8,
                "item_unit": "wedge",
            }
        ],
        "production_runs": [
            {
                "ref": "run-1",
                "recipe_slug": "shortbread",
                "batches_produced": 1,
                "units_produced": 8,
                "produced_at": "2024-03-01T10:00:00Z",
            },
            {
                "recipe_name": "Plain Scones",
                "num_batches": 2,
                "actual_yield": 2,
                "produced_at": "2024-03-02T10:00:00.250000Z",
            },
        ],
        "snapshot_backfill": {"format": 1, "recipe_snapshots": [{"run": "run-1", "linked": True}]},
    }


def document_with_deletions() -> dict[str, Any]:
    """``minimal_document`` plus a deleted recipe (with a run) and a deleted ingredient."""
    doc = minimal_document()
    runs = doc["production_runs"]
    runs[1]["ref"] = "run-2"
    runs[1]["produced_at"] = "2024-03-02T10:00:00Z"
    runs.append(
        {
            "ref": "run-3",
            "recipe_slug": "lemon_bars",
            "batches_produced": 1,
            "units_produced": 12,
            "produced_at": "2024-03-03T10:00:00Z",
        }
    )
    doc["snapshot_backfill"] = {
        "format": 1,
        "deleted_recipes": [{"slug": "lemon_bars", "name": "Lemon Bars"}],
        "deleted_ingredients": ["butter_unsalted"],
        "recipe_snapshots": [{"run": "run-1", "linked": True}],
    }
    return doc
