"""Validation of sample data files: every bad value is one error naming the file, the JSON path
and the problem, and a file that fails validation changes no database.

Table-driven: each case mutates a small valid document (``valid_document``) in one way."""

from __future__ import annotations

import errno
import io
import json
import os
import sqlite3
import sys
from collections.abc import Sequence
from contextlib import closing
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, NamedTuple, Union

import pytest
from sqlalchemy.engine import URL

from snapshot_backfill.cli import main
from snapshot_backfill.errors import EXIT_BAD_INPUT, BadInputError, SampleDataError
from snapshot_backfill.models import YieldMode
from snapshot_backfill.payload import RECIPE_DATA_COLUMNS
from snapshot_backfill.sample_data import SampleData, load_sample_file, read_sample

from sample_documents import document_with_deletions

Key = Union[str, int]
Mutation = Callable[[dict[str, Any]], None]

EXTENSION_KEYS = "format, comment, deleted_recipes, deleted_ingredients, recipe_snapshots"
SNAPSHOT_KEYS = "run, linked, scale_factor, snapshot_date, is_backfilled, recipe_data"


def valid_document() -> dict[str, Any]:
    """Build a small valid sample with a deleted recipe, a deleted ingredient and a snapshot."""
    return document_with_deletions()


# --------------------------------------------------------------------------------------------
# Mutations of valid_document()
# --------------------------------------------------------------------------------------------


def _parent(document: dict[str, Any], path: Sequence[Key]) -> Any:
    node: Any = document
    for key in path[:-1]:
        node = node[key]
    return node


def set_value(*path: Key, value: Any) -> Mutation:
    """Set the value at ``path`` (keys and list indexes), creating a missing last key."""

    def mutate(document: dict[str, Any]) -> None:
        _parent(document, path)[path[-1]] = value

    return mutate


def delete(*path: Key) -> Mutation:
    """Remove the key (or list item) at ``path``."""

    def mutate(document: dict[str, Any]) -> None:
        del _parent(document, path)[path[-1]]

    return mutate


def append(*path: Key, value: Any) -> Mutation:
    """Append ``value`` to the list at ``path``."""

    def mutate(document: dict[str, Any]) -> None:
        _parent(document, path)[path[-1]].append(value)

    return mutate


def together(*mutations: Mutation) -> Mutation:
    """Apply several mutations in order."""

    def mutate(document: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(document)

    return mutate


class BadValue(NamedTuple):
    """One validation case: the mutation, the JSON path it breaks and the exact problem."""

    case_id: str
    mutate: Mutation
    json_path: str
    problem: str


RUN_0 = ("production_runs", 0)
RUN_1 = ("production_runs", 1)
UNIT_0 = ("finished_units", 0)
RECIPE_0 = ("recipes", 0)
RECIPE_1 = ("recipes", 1)
LINE_0 = ("recipes", 0, "ingredients", 0)
INGREDIENT_0 = ("ingredients", 0)
EXTENSION = ("snapshot_backfill",)
DELETED_RECIPE_0 = ("snapshot_backfill", "deleted_recipes", 0)
SNAPSHOT_0 = ("snapshot_backfill", "recipe_snapshots", 0)

EXT = "$.snapshot_backfill"
SNAP = f"{EXT}.recipe_snapshots[0]"

BAD_VALUES: list[BadValue] = [
    # -- the header ------------------------------------------------------------------------
    BadValue("version-blank", set_value("version", value="  "), "$.version", "must not be empty"),
    BadValue(
        "application-missing",
        delete("application"),
        "$.application",
        "required field is missing",
    ),
    BadValue(
        "exported-at-a-number",
        set_value("exported_at", value=20250106),
        "$.exported_at",
        "expected a string, found a number",
    ),
    BadValue(
        "exported-at-not-a-time",
        set_value("exported_at", value="yesterday"),
        "$.exported_at",
        "expected an ISO 8601 UTC timestamp ending in Z (e.g. 2025-01-06T18:30:00Z), "
        "found 'yesterday'",
    ),
    BadValue(
        "exported-at-with-offset",
        set_value("exported_at", value="2025-01-06T18:30:00+01:00"),
        "$.exported_at",
        "expected an ISO 8601 UTC timestamp ending in Z (e.g. 2025-01-06T18:30:00Z), "
        "found '2025-01-06T18:30:00+01:00'",
    ),
    # -- entity arrays and the extension object --------------------------------------------
    BadValue(
        "ingredients-a-string",
        set_value("ingredients", value="flour"),
        "$.ingredients",
        "expected an array, found a string",
    ),
    BadValue(
        "runs-an-object",
        set_value("production_runs", value={"run-1": {}}),
        "$.production_runs",
        "expected an array, found an object",
    ),
    BadValue(
        "extension-an-array",
        set_value("snapshot_backfill", value=[]),
        EXT,
        "expected an object, found an array",
    ),
    BadValue(
        "extension-key-with-a-space",
        set_value(*EXTENSION, "deleted recipes", value=[]),
        f'{EXT}["deleted recipes"]',
        f"unknown extension key (expected one of: {EXTENSION_KEYS})",
    ),
    BadValue(
        "extension-format-2",
        set_value(*EXTENSION, "format", value=2),
        f"{EXT}.format",
        "unsupported extension format 2 (this loader reads format 1)",
    ),
    BadValue(
        "extension-format-true",
        set_value(*EXTENSION, "format", value=True),
        f"{EXT}.format",
        "unsupported extension format True (this loader reads format 1)",
    ),
    BadValue(
        "extension-format-a-string",
        set_value(*EXTENSION, "format", value="1"),
        f"{EXT}.format",
        "unsupported extension format '1' (this loader reads format 1)",
    ),
    # -- deleted recipes -------------------------------------------------------------------
    BadValue(
        "deleted-recipes-an-object",
        set_value(*EXTENSION, "deleted_recipes", value={"slug": "lemon_bars"}),
        f"{EXT}.deleted_recipes",
        "expected an array, found an object",
    ),
    BadValue(
        "deleted-recipe-a-string",
        set_value(*DELETED_RECIPE_0, value="lemon_bars"),
        f"{EXT}.deleted_recipes[0]",
        "expected an object, found a string",
    ),
    BadValue(
        "deleted-recipe-unknown-key",
        set_value(*DELETED_RECIPE_0, "yield_quantity", value=2),
        f"{EXT}.deleted_recipes[0].yield_quantity",
        "unknown key (expected: slug, name, category)",
    ),
    BadValue(
        "deleted-recipe-without-slug",
        delete(*DELETED_RECIPE_0, "slug"),
        f"{EXT}.deleted_recipes[0].slug",
        "required field is missing",
    ),
    BadValue(
        "deleted-recipe-listed-twice",
        append(*EXTENSION, "deleted_recipes", value={"slug": "lemon_bars", "name": "Lemon Bars"}),
        f"{EXT}.deleted_recipes[1].slug",
        "recipe slug 'lemon_bars' is listed twice",
    ),
    BadValue(
        "deleted-recipe-name-too-long",
        set_value(*DELETED_RECIPE_0, "name", value="L" * 201),
        f"{EXT}.deleted_recipes[0].name",
        "longer than 200 characters (201)",
    ),
    BadValue(
        "deleted-recipe-category-a-number",
        set_value(*DELETED_RECIPE_0, "category", value=7),
        f"{EXT}.deleted_recipes[0].category",
        "expected a string or null, found a number",
    ),
    # -- ingredients -----------------------------------------------------------------------
    BadValue(
        "ingredient-an-array",
        set_value(*INGREDIENT_0, value=["flour"]),
        "$.ingredients[0]",
        "expected an object, found an array",
    ),
    BadValue(
        "ingredient-slug-too-long",
        set_value(*INGREDIENT_0, "slug", value="f" * 201),
        "$.ingredients[0].slug",
        "longer than 200 characters (201)",
    ),
    BadValue(
        "ingredient-display-name-twice",
        set_value("ingredients", 1, "display_name", value="All-purpose flour"),
        "$.ingredients[1].display_name",
        "display_name 'All-purpose flour' is already used by $.ingredients[0] "
        "(the column is UNIQUE)",
    ),
    BadValue(
        "ingredient-category-empty",
        set_value(*INGREDIENT_0, "category", value=""),
        "$.ingredients[0].category",
        "must not be empty",
    ),
    BadValue(
        "hierarchy-level-3",
        set_value(*INGREDIENT_0, "hierarchy_level", value=3),
        "$.ingredients[0].hierarchy_level",
        "must be 0, 1 or 2",
    ),
    BadValue(
        "hierarchy-level-negative",
        set_value(*INGREDIENT_0, "hierarchy_level", value=-1),
        "$.ingredients[0].hierarchy_level",
        "must be at least 0, found -1",
    ),
    BadValue(
        "hierarchy-level-fractional",
        set_value(*INGREDIENT_0, "hierarchy_level", value=1.5),
        "$.ingredients[0].hierarchy_level",
        "expected an integer, found a number (1.5)",
    ),
    BadValue(
        "hierarchy-level-a-string",
        set_value(*INGREDIENT_0, "hierarchy_level", value="2"),
        "$.ingredients[0].hierarchy_level",
        "expected an integer, found a string ('2')",
    ),
    BadValue(
        "is-packaging-a-string",
        set_value(*INGREDIENT_0, "is_packaging", value="yes"),
        "$.ingredients[0].is_packaging",
        "expected true or false, found a string",
    ),
    BadValue(
        "density-zero",
        set_value(*INGREDIENT_0, "density_volume_value", value=0),
        "$.ingredients[0].density_volume_value",
        "must be greater than 0, found 0",
    ),
    BadValue(
        "density-a-boolean",
        set_value(*INGREDIENT_0, "density_weight_value", value=True),
        "$.ingredients[0].density_weight_value",
        "expected a number, found a boolean (True)",
    ),
    BadValue(
        "density-unit-too-long",
        set_value(*INGREDIENT_0, "density_volume_unit", value="u" * 21),
        "$.ingredients[0].density_volume_unit",
        "longer than 20 characters (21)",
    ),
    BadValue(
        "description-a-number",
        set_value(*INGREDIENT_0, "description", value=12),
        "$.ingredients[0].description",
        "expected a string or null, found a number",
    ),
    # -- recipes and their lines -----------------------------------------------------------
    BadValue(
        "recipe-a-number",
        set_value(*RECIPE_1, value=2),
        "$.recipes[1]",
        "expected an object, found a number",
    ),
    BadValue(
        "recipe-name-without-letters",
        set_value(*RECIPE_1, "name", value="!!!"),
        "$.recipes[1].name",
        "cannot derive a slug from this name; give the recipe a slug",
    ),
    BadValue(
        "recipe-slug-twice",
        set_value(*RECIPE_1, "slug", value="shortbread"),
        "$.recipes[1].slug",
        "recipe slug 'shortbread' is already used by $.recipes[0]",
    ),
    BadValue(
        "recipe-derived-slug-twice",
        set_value(*RECIPE_1, "name", value="Shortbread!"),
        "$.recipes[1].name",
        "recipe slug 'shortbread' is already used by $.recipes[0]",
    ),
    BadValue(
        "recipe-present-and-deleted",
        set_value(*RECIPE_1, "slug", value="lemon_bars"),
        "$.recipes[1].slug",
        "recipe slug 'lemon_bars' is also listed in $.snapshot_backfill.deleted_recipes; "
        "a recipe is either present or deleted",
    ),
    BadValue(
        "recipe-name-too-long",
        set_value(*RECIPE_0, "name", value="S" * 201),
        "$.recipes[0].name",
        "longer than 200 characters (201)",
    ),
    BadValue(
        "yield-quantity-zero",
        set_value(*RECIPE_0, "yield_quantity", value=0),
        "$.recipes[0].yield_quantity",
        "must be greater than 0, found 0",
    ),
    BadValue(
        "yield-quantity-negative",
        set_value(*RECIPE_0, "yield_quantity", value=-2.5),
        "$.recipes[0].yield_quantity",
        "must be greater than 0, found -2.5",
    ),
    BadValue(
        "yield-unit-too-long",
        set_value(*RECIPE_0, "yield_unit", value="u" * 51),
        "$.recipes[0].yield_unit",
        "longer than 50 characters (51)",
    ),
    BadValue(
        "estimated-time-negative",
        set_value(*RECIPE_0, "estimated_time_minutes", value=-5),
        "$.recipes[0].estimated_time_minutes",
        "must be at least 0, found -5",
    ),
    BadValue(
        "prep-time-a-boolean",
        set_value(*RECIPE_0, "prep_time_minutes", value=True),
        "$.recipes[0].prep_time_minutes",
        "expected an integer, found a boolean (True)",
    ),
    BadValue(
        "cook-time-a-string",
        set_value(*RECIPE_0, "cook_time_minutes", value="20 min"),
        "$.recipes[0].cook_time_minutes",
        "expected an integer, found a string ('20 min')",
    ),
    BadValue(
        "is-archived-a-number",
        set_value(*RECIPE_0, "is_archived", value=0),
        "$.recipes[0].is_archived",
        "expected true or false, found a number",
    ),
    BadValue(
        "variant-name-too-long",
        set_value(*RECIPE_0, "variant_name", value="v" * 101),
        "$.recipes[0].variant_name",
        "longer than 100 characters (101)",
    ),
    BadValue(
        "variant-of-itself",
        set_value(*RECIPE_0, "base_recipe_slug", value="shortbread"),
        "$.recipes[0].base_recipe_slug",
        "a recipe cannot be a variant of itself",
    ),
    BadValue(
        "variant-of-a-deleted-recipe",
        set_value(*RECIPE_1, "base_recipe_slug", value="lemon_bars"),
        "$.recipes[1].base_recipe_slug",
        "unknown base recipe 'lemon_bars': not a slug in $.recipes",
    ),
    BadValue(
        "base-recipe-a-number",
        set_value(*RECIPE_1, "base_recipe_slug", value=1),
        "$.recipes[1].base_recipe_slug",
        "expected a string or null, found a number",
    ),
    BadValue(
        "recipe-without-ingredients-key",
        delete(*RECIPE_1, "ingredients"),
        "$.recipes[1].ingredients",
        "required field is missing (use [] for a recipe without ingredients)",
    ),
    BadValue(
        "recipe-ingredients-null",
        set_value(*RECIPE_1, "ingredients", value=None),
        "$.recipes[1].ingredients",
        "expected an array, found null",
    ),
    BadValue(
        "line-a-string",
        set_value(*LINE_0, value="flour_all_purpose"),
        "$.recipes[0].ingredients[0]",
        "expected an object, found a string",
    ),
    BadValue(
        "line-without-quantity",
        delete(*LINE_0, "quantity"),
        "$.recipes[0].ingredients[0].quantity",
        "required field is missing",
    ),
    BadValue(
        "line-quantity-zero",
        set_value(*LINE_0, "quantity", value=0),
        "$.recipes[0].ingredients[0].quantity",
        "must be greater than 0, found 0",
    ),
    BadValue(
        "line-quantity-infinite",
        set_value(*LINE_0, "quantity", value=float("inf")),
        "$.recipes[0].ingredients[0].quantity",
        "expected a finite number, found inf",
    ),
    BadValue(
        "line-quantity-null",
        set_value(*LINE_0, "quantity", value=None),
        "$.recipes[0].ingredients[0].quantity",
        "expected a number, found null (None)",
    ),
    BadValue(
        "line-slug-too-long",
        set_value(*LINE_0, "ingredient_slug", value="f" * 201),
        "$.recipes[0].ingredients[0].ingredient_slug",
        "longer than 200 characters (201)",
    ),
    BadValue(
        "line-notes-too-long",
        set_value(*LINE_0, "notes", value="n" * 501),
        "$.recipes[0].ingredients[0].notes",
        "longer than 500 characters (501)",
    ),
    # -- deleted ingredients ---------------------------------------------------------------
    BadValue(
        "deleted-ingredients-a-string",
        set_value(*EXTENSION, "deleted_ingredients", value="butter_unsalted"),
        f"{EXT}.deleted_ingredients",
        "expected an array, found a string",
    ),
    BadValue(
        "deleted-ingredient-empty",
        set_value(*EXTENSION, "deleted_ingredients", value=[" "]),
        f"{EXT}.deleted_ingredients[0]",
        "expected an ingredient slug, found a string",
    ),
    BadValue(
        "deleted-ingredient-a-number",
        set_value(*EXTENSION, "deleted_ingredients", value=[3]),
        f"{EXT}.deleted_ingredients[0]",
        "expected an ingredient slug, found a number",
    ),
    BadValue(
        "deleted-ingredient-twice",
        append(*EXTENSION, "deleted_ingredients", value="butter_unsalted"),
        f"{EXT}.deleted_ingredients[1]",
        "ingredient 'butter_unsalted' is listed twice",
    ),
    # -- finished units --------------------------------------------------------------------
    BadValue(
        "unit-null",
        set_value(*UNIT_0, value=None),
        "$.finished_units[0]",
        "expected an object, found null",
    ),
    BadValue(
        "unit-slug-twice",
        append(
            "finished_units",
            value={
                "slug": "shortbread_wedge",
                "recipe_slug": "shortbread",
                "display_name": "Shortbread Finger",
                "yield_mode": "discrete_count",
            },
        ),
        "$.finished_units[1].slug",
        "finished unit slug 'shortbread_wedge' is already used by $.finished_units[0]",
    ),
    BadValue(
        "unit-slug-too-long",
        set_value(*UNIT_0, "slug", value="w" * 101),
        "$.finished_units[0].slug",
        "longer than 100 characters (101)",
    ),
    BadValue(
        "unit-without-recipe",
        delete(*UNIT_0, "recipe_slug"),
        "$.finished_units[0].recipe_slug",
        "required field is missing",
    ),
    BadValue(
        "unit-without-yield-mode",
        delete(*UNIT_0, "yield_mode"),
        "$.finished_units[0].yield_mode",
        "required field is missing",
    ),
    BadValue(
        "items-per-batch-zero",
        set_value(*UNIT_0, "items_per_batch", value=0),
        "$.finished_units[0].items_per_batch",
        "must be at least 1, found 0",
    ),
    BadValue(
        "batch-percentage-over-100",
        set_value(*UNIT_0, "batch_percentage", value=150),
        "$.finished_units[0].batch_percentage",
        "must be at most 100, found 150",
    ),
    BadValue(
        "batch-percentage-zero",
        set_value(*UNIT_0, "batch_percentage", value=0),
        "$.finished_units[0].batch_percentage",
        "must be greater than 0, found 0",
    ),
    BadValue(
        "unit-cost-negative",
        set_value(*UNIT_0, "unit_cost", value=-1),
        "$.finished_units[0].unit_cost",
        "must not be negative, found -1",
    ),
    BadValue(
        "inventory-count-negative",
        set_value(*UNIT_0, "inventory_count", value=-1),
        "$.finished_units[0].inventory_count",
        "must be at least 0, found -1",
    ),
    BadValue(
        "unit-display-name-missing",
        delete(*UNIT_0, "display_name"),
        "$.finished_units[0].display_name",
        "required field is missing",
    ),
    # -- production runs -------------------------------------------------------------------
    BadValue(
        "run-null",
        set_value(*RUN_0, value=None),
        "$.production_runs[0]",
        "expected an object, found null",
    ),
    BadValue(
        "ref-empty",
        set_value(*RUN_0, "ref", value=""),
        "$.production_runs[0].ref",
        "must not be empty",
    ),
    BadValue(
        "ref-a-number",
        set_value(*RUN_0, "ref", value=1),
        "$.production_runs[0].ref",
        "expected a string or null, found a number",
    ),
    BadValue(
        "ref-twice",
        set_value(*RUN_1, "ref", value="run-1"),
        "$.production_runs[1].ref",
        "ref 'run-1' is already used by $.production_runs[0]",
    ),
    BadValue(
        "run-without-recipe",
        delete(*RUN_0, "recipe_slug"),
        "$.production_runs[0].recipe_slug",
        "required field is missing (give recipe_slug or recipe_name)",
    ),
    BadValue(
        "run-recipe-name-empty",
        set_value(*RUN_1, "recipe_name", value=""),
        "$.production_runs[1].recipe_name",
        "must not be empty",
    ),
    BadValue(
        "run-slug-and-name-disagree",
        set_value(*RUN_0, "recipe_name", value="Plain Scones"),
        "$.production_runs[0].recipe_name",
        "names recipe 'plain_scones' but recipe_slug names 'shortbread'",
    ),
    BadValue(
        "run-recipe-name-ambiguous",
        together(
            set_value(*RECIPE_1, "name", value="Shortbread"),
            set_value(*RECIPE_1, "slug", value="shortbread_rich"),
            delete(*RUN_0, "recipe_slug"),
            set_value(*RUN_0, "recipe_name", value="Shortbread"),
        ),
        "$.production_runs[0].recipe_name",
        "recipe name 'Shortbread' is ambiguous (shortbread, shortbread_rich); use recipe_slug",
    ),
    BadValue(
        "run-unknown-finished-unit",
        set_value(*RUN_0, "finished_unit_slug", value="shortbread_finger"),
        "$.production_runs[0].finished_unit_slug",
        "unknown finished unit 'shortbread_finger': not in $.finished_units",
    ),
    BadValue(
        "run-finished-unit-of-another-recipe",
        set_value(*RUN_1, "finished_unit_slug", value="shortbread_wedge"),
        "$.production_runs[1].finished_unit_slug",
        "finished unit 'shortbread_wedge' belongs to recipe 'shortbread', "
        "not to the run's recipe 'plain_scones'",
    ),
    BadValue(
        # The loader makes plain_scones_batch for run-2; a file cannot name it.
        "run-names-a-default-finished-unit",
        append(
            "production_runs",
            value={
                "recipe_slug": "plain_scones",
                "finished_unit_slug": "plain_scones_batch",
                "batches_produced": 1,
                "units_produced": 1,
                "produced_at": "2024-03-04T10:00:00Z",
            },
        ),
        "$.production_runs[3].finished_unit_slug",
        "unknown finished unit 'plain_scones_batch': not in $.finished_units",
    ),
    BadValue(
        "run-without-batches",
        delete(*RUN_0, "batches_produced"),
        "$.production_runs[0].batches_produced",
        "required field is missing (give batches_produced or num_batches)",
    ),
    BadValue(
        "run-without-yield",
        delete(*RUN_1, "actual_yield"),
        "$.production_runs[1].units_produced",
        "required field is missing (give units_produced or actual_yield)",
    ),
    BadValue(
        "units-produced-fractional",
        set_value(*RUN_0, "units_produced", value=2.5),
        "$.production_runs[0].units_produced",
        "expected an integer, found a number (2.5)",
    ),
    BadValue(
        "expected-yield-negative",
        set_value(*RUN_0, "expected_yield", value=-1),
        "$.production_runs[0].expected_yield",
        "must be at least 0, found -1",
    ),
    BadValue(
        "actual-cost-negative",
        set_value(*RUN_0, "actual_cost", value=-3.5),
        "$.production_runs[0].actual_cost",
        "must not be negative, found -3.5",
    ),
    BadValue(
        "actual-cost-a-string",
        set_value(*RUN_0, "actual_cost", value="3.50"),
        "$.production_runs[0].actual_cost",
        "expected a number, found a string ('3.50')",
    ),
    BadValue(
        "cost-spellings-disagree",
        together(
            set_value(*RUN_0, "actual_cost", value=3.5),
            set_value(*RUN_0, "total_ingredient_cost", value=4.0),
        ),
        "$.production_runs[0].total_ingredient_cost",
        "total_ingredient_cost (4.0) contradicts actual_cost (3.5)",
    ),
    BadValue(
        "per-unit-cost-negative",
        set_value(*RUN_0, "per_unit_cost", value=-0.5),
        "$.production_runs[0].per_unit_cost",
        "must not be negative, found -0.5",
    ),
    BadValue(
        "produced-at-missing",
        delete(*RUN_0, "produced_at"),
        "$.production_runs[0].produced_at",
        "required field is missing",
    ),
    BadValue(
        "produced-at-a-number",
        set_value(*RUN_0, "produced_at", value=20240301),
        "$.production_runs[0].produced_at",
        "expected an ISO 8601 timestamp string, found a number",
    ),
    BadValue(
        "loss-quantity-a-string",
        set_value(*RUN_0, "loss_quantity", value="none"),
        "$.production_runs[0].loss_quantity",
        "expected an integer, found a string ('none')",
    ),
    BadValue(
        "production-status-too-long",
        set_value(*RUN_0, "production_status", value="s" * 21),
        "$.production_runs[0].production_status",
        "longer than 20 characters (21)",
    ),
    # -- the extension's snapshots ---------------------------------------------------------
    BadValue(
        "snapshots-an-object",
        set_value(*EXTENSION, "recipe_snapshots", value={"run-1": True}),
        f"{EXT}.recipe_snapshots",
        "expected an array, found an object",
    ),
    BadValue(
        "snapshot-a-string",
        set_value(*SNAPSHOT_0, value="run-1"),
        SNAP,
        "expected an object, found a string",
    ),
    BadValue(
        "snapshot-unknown-key",
        set_value(*SNAPSHOT_0, "date", value="2024-03-01"),
        f"{SNAP}.date",
        f"unknown key (expected: {SNAPSHOT_KEYS})",
    ),
    BadValue(
        "snapshot-run-a-number",
        set_value(*SNAPSHOT_0, "run", value=1),
        f"{SNAP}.run",
        "expected a string, found a number",
    ),
    BadValue(
        "snapshot-twice-for-a-run",
        append(*EXTENSION, "recipe_snapshots", value={"run": "run-1", "linked": False}),
        f"{EXT}.recipe_snapshots[1].run",
        "run 'run-1' already has a snapshot at $.snapshot_backfill.recipe_snapshots[0] "
        "(production_run_id is UNIQUE)",
    ),
    BadValue(
        "snapshot-without-linked",
        delete(*SNAPSHOT_0, "linked"),
        f"{SNAP}.linked",
        "required field is missing (true: the run points at the snapshot; false: the run's "
        "recipe_snapshot_id is still NULL)",
    ),
    BadValue(
        "snapshot-linked-a-string",
        set_value(*SNAPSHOT_0, "linked", value="yes"),
        f"{SNAP}.linked",
        "expected true or false, found a string",
    ),
    BadValue(
        "snapshot-scale-factor-zero",
        set_value(*SNAPSHOT_0, "scale_factor", value=0),
        f"{SNAP}.scale_factor",
        "must be greater than 0, found 0",
    ),
    BadValue(
        "snapshot-date-not-a-time",
        set_value(*SNAPSHOT_0, "snapshot_date", value="soon"),
        f"{SNAP}.snapshot_date",
        "not an ISO 8601 timestamp: 'soon'",
    ),
    BadValue(
        "snapshot-is-backfilled-a-number",
        set_value(*SNAPSHOT_0, "is_backfilled", value=1),
        f"{SNAP}.is_backfilled",
        "expected true or false, found a number",
    ),
    BadValue(
        "snapshot-recipe-data-an-array",
        set_value(*SNAPSHOT_0, "recipe_data", value=[]),
        f"{SNAP}.recipe_data",
        "expected an object, found an array",
    ),
    BadValue(
        "snapshot-recipe-data-unknown-field",
        set_value(*SNAPSHOT_0, "recipe_data", value={"servings": 4}),
        f"{SNAP}.recipe_data.servings",
        f"not a recipe_data field (expected: {', '.join(RECIPE_DATA_COLUMNS)})",
    ),
]

ROOT_VALUES = [
    pytest.param(None, "expected an object, found null", id="null"),
    pytest.param(True, "expected an object, found a boolean", id="boolean"),
    pytest.param(3.6, "expected an object, found a number", id="number"),
    pytest.param("3.6", "expected an object, found a string", id="string"),
    pytest.param([], "expected an object, found an array", id="array"),
]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def sqlite_url(path: Path) -> URL:
    return URL.create("sqlite", database=str(path))


def write_document(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def parse(tmp_path: Path, document: Any) -> SampleData:
    return read_sample(write_document(tmp_path / "sample.json", document))


def existing_database(path: Path) -> bytes:
    """Create a SQLite file holding one unrelated table and row; return its bytes."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('keep me')")
        conn.commit()
    return path.read_bytes()


def assert_rejected_without_changes(tmp_path: Path, sample: Path, message: str) -> None:
    """Loading ``sample`` fails with ``message``: no new file, an existing one untouched."""
    existing = tmp_path / "existing.db"
    before = existing_database(existing)
    files_before = sorted(p.name for p in tmp_path.iterdir())

    with pytest.raises(BadInputError) as into_new:
        load_sample_file(sqlite_url(tmp_path / "new.db"), sample)
    with pytest.raises(BadInputError) as into_existing:
        load_sample_file(sqlite_url(existing), sample)

    assert str(into_new.value) == str(into_existing.value) == message
    assert existing.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before


def cli_load_sample(database: Path, sample: Path) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    code = main(
        ["load-sample", "--database-url", str(database), "--sample", str(sample)],
        stdout=stdout,
        stderr=stderr,
        stdin=io.StringIO(""),
    )
    return code, stdout.getvalue(), stderr.getvalue()


# --------------------------------------------------------------------------------------------
# The valid document, and what the parser makes of values it accepts
# --------------------------------------------------------------------------------------------


def test_the_valid_document_loads(tmp_path: Path) -> None:
    sample = write_document(tmp_path / "sample.json", valid_document())
    report = load_sample_file(sqlite_url(tmp_path / "bake.db"), sample)
    assert report.inserted == {
        "ingredients": 1,
        "recipes": 2,
        "recipe_ingredients": 2,
        "finished_units": 3,
        "production_runs": 3,
        "recipe_snapshots": 1,
    }
    assert report.removed == {"recipes": 1, "ingredients": 1}
    assert report.default_finished_units == ["plain_scones_batch", "lemon_bars_batch"]
    assert report.expected is not None
    assert (report.expected.already_linked, report.expected.orphaned) == (1, 1)
    assert report.expected.orphaned_refs == ("run-3",)


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    sample = tmp_path / "bom.json"
    sample.write_bytes(b"\xef\xbb\xbf" + json.dumps(valid_document()).encode("utf-8"))
    assert read_sample(sample).header.version == "3.6"


def test_null_arrays_are_empty_and_unknown_arrays_are_counted(tmp_path: Path) -> None:
    document = valid_document()
    document.update(
        production_runs=None,
        finished_units=None,
        products=[{"slug": "a"}, {"slug": "b"}],
        settings={"currency": "EUR"},
        purchases=None,
    )
    document["snapshot_backfill"] = {"format": 1, "comment": "no history"}
    data = parse(tmp_path, document)
    assert (data.production_runs, data.recipe_snapshots, data.deleted_recipes) == ((), (), ())
    assert data.finished_units == ()
    assert data.ignored_arrays == {"products": 2, "settings": 1, "purchases": 0}


def test_a_null_extension_is_no_extension(tmp_path: Path) -> None:
    document = valid_document()
    document["snapshot_backfill"] = None
    document["production_runs"] = document["production_runs"][:2]
    data = parse(tmp_path, document)
    assert (data.deleted_recipes, data.deleted_ingredients, data.recipe_snapshots) == ((), (), ())


def test_timestamps_are_read_as_naive_utc(tmp_path: Path) -> None:
    document = valid_document()
    document["production_runs"][0]["produced_at"] = "2024-03-01T12:00:00+02:00"
    document["production_runs"][1]["produced_at"] = "2024-03-02T10:00:00z"
    document["production_runs"][2]["produced_at"] = "2024-03-03 10:00:00"
    document["snapshot_backfill"]["recipe_snapshots"][0]["snapshot_date"] = "2024-02-29T23:00:00Z"
    data = parse(tmp_path, document)
    assert [run.columns["produced_at"] for run in data.production_runs] == [
        datetime(2024, 3, 1, 10, 0),
        datetime(2024, 3, 2, 10, 0),
        datetime(2024, 3, 3, 10, 0),
    ]
    assert data.recipe_snapshots[0].snapshot_date == datetime(2024, 2, 29, 23, 0)


def test_whole_floats_count_as_integers(tmp_path: Path) -> None:
    document = valid_document()
    document["production_runs"][0].update(batches_produced=2.0, num_batches=2)
    run = parse(tmp_path, document).production_runs[0]
    assert run.columns["num_batches"] == 2
    assert isinstance(run.columns["num_batches"], int)


def test_recipe_time_is_prep_plus_cook(tmp_path: Path) -> None:
    document = valid_document()
    document["recipes"][0].update(prep_time_minutes=15, cook_time_minutes=20)
    document["recipes"][1].update(cook_time_minutes=25)
    recipes = {recipe.slug: recipe for recipe in parse(tmp_path, document).recipes}
    assert recipes["shortbread"].columns["estimated_time_minutes"] == 35
    assert recipes["plain_scones"].columns["estimated_time_minutes"] == 25
    assert recipes["lemon_bars"].columns["category"] == "Uncategorized"


def test_only_recipes_without_a_yield_are_reported(tmp_path: Path) -> None:
    document = valid_document()
    document["recipes"][0].update(yield_quantity=24, yield_unit="cookies")
    document["recipes"][1].update(yield_quantity=8)  # a quantity without a unit
    data = parse(tmp_path, document)
    assert [note for note in data.notes if "without a yield" in note] == [
        "1 recipe(s) without a yield got yield_quantity 1, yield_unit 'batch': $.recipes[1]"
    ]
    document["recipes"][1]["yield_unit"] = "scones"
    data = parse(tmp_path, document)
    assert not [note for note in data.notes if "without a yield" in note]
    recipes = {recipe.slug: recipe.columns for recipe in data.recipes}
    assert (recipes["shortbread"]["yield_quantity"], recipes["shortbread"]["yield_unit"]) == (
        24,
        "cookies",
    )


def test_expected_yield_and_costs_follow_the_finished_unit(tmp_path: Path) -> None:
    document = valid_document()
    document["finished_units"].append(
        {
            "slug": "scone_quarter",
            "recipe_slug": "plain_scones",
            "display_name": "Scone Quarter",
            "yield_mode": "BATCH_PORTION",
            "batch_percentage": 25,
        }
    )
    document["production_runs"][0].update(actual_cost=3.0, units_produced=8)
    document["production_runs"][1].update(total_ingredient_cost=1.0, actual_yield=0)
    document["production_runs"][2].update(per_unit_cost=0.25, expected_yield=10)
    runs = parse(tmp_path, document).production_runs
    # discrete count: batches x items; batch portion: batches x (100 // percentage).
    assert [run.columns["expected_yield"] for run in runs] == [8, 8, 10]
    assert [run.columns["per_unit_cost"] for run in runs] == [
        Decimal("0.3750"),
        Decimal("0.0000"),
        Decimal("0.2500"),
    ]
    assert runs[1].finished_unit_slug == "scone_quarter"


def test_a_default_unit_of_a_fractional_yield_expects_the_actual_yield(tmp_path: Path) -> None:
    document = valid_document()
    document["recipes"][1]["yield_quantity"] = 1.5
    data = parse(tmp_path, document)
    unit = next(u for u in data.finished_units if u.slug == "plain_scones_batch")
    assert unit.defaulted
    assert unit.columns["yield_mode"] is YieldMode.DISCRETE_COUNT
    assert unit.columns["items_per_batch"] is None
    assert data.production_runs[1].columns["expected_yield"] == 2  # its actual_yield


def test_a_default_unit_slug_does_not_take_an_existing_one(tmp_path: Path) -> None:
    document = valid_document()
    document["finished_units"].append(
        {
            "slug": "plain_scones_batch",
            "recipe_slug": "shortbread",
            "display_name": "Shortbread Tray",
            "yield_mode": "discrete_count",
        }
    )
    data = parse(tmp_path, document)
    assert data.production_runs[1].finished_unit_slug == "plain_scones_batch_2"
    assert "plain_scones_batch_2" in data.default_finished_units


def test_minimal_ingredients_get_a_unique_display_name(tmp_path: Path) -> None:
    document = valid_document()
    document["ingredients"][1]["display_name"] = "Sugar"
    document["recipes"][1]["ingredients"] = [
        {"ingredient_slug": "sugar", "quantity": 1, "unit": "cup"},
        {"ingredient_slug": "_", "quantity": 1, "unit": "pinch"},
    ]
    data = parse(tmp_path, document)
    names = {entry.slug: entry.columns["display_name"] for entry in data.ingredients}
    # "Sugar" is taken by butter_unsalted's row: the slug itself becomes the name.
    assert names["sugar"] == "sugar"
    assert names["_"] == "_"
    assert data.minimal_ingredients == ("sugar", "_")
    assert any("2 ingredient slug(s)" in note for note in data.notes)


def test_runs_naming_an_event_and_unknown_fields_are_reported(tmp_path: Path) -> None:
    document = valid_document()
    document["production_runs"][0]["event_slug"] = "spring_fair"
    document["production_runs"][1]["event_name"] = "Spring Fair"
    document["recipes"][0]["instructions"] = "Mix and bake."
    data = parse(tmp_path, document)
    assert any(note.startswith("2 run(s) name an event") for note in data.notes)
    assert data.ignored_fields == {
        "production_runs": ("event_name", "event_slug"),
        "recipes": ("instructions",),
    }


def test_a_recipe_name_null_beside_a_slug_is_ignored(tmp_path: Path) -> None:
    document = valid_document()
    document["production_runs"][0]["recipe_name"] = None
    assert parse(tmp_path, document).production_runs[0].recipe_slug == "shortbread"


# --------------------------------------------------------------------------------------------
# Bad values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "json_path", "problem"),
    [case[1:] for case in BAD_VALUES],
    ids=[case.case_id for case in BAD_VALUES],
)
def test_a_bad_value_is_named_by_its_json_path(
    tmp_path: Path, mutate: Mutation, json_path: str, problem: str
) -> None:
    document = valid_document()
    mutate(document)
    sample = write_document(tmp_path / "sample.json", document)

    with pytest.raises(SampleDataError) as caught:
        read_sample(sample)

    error = caught.value
    assert (error.path, error.json_path, error.problem) == (str(sample), json_path, problem)
    message = f"{sample}: {json_path}: {problem}"
    assert str(error) == message
    assert_rejected_without_changes(tmp_path, sample, message)


@pytest.mark.parametrize(("root", "problem"), ROOT_VALUES)
def test_a_document_that_is_not_an_object(tmp_path: Path, root: Any, problem: str) -> None:
    sample = write_document(tmp_path / "sample.json", root)
    with pytest.raises(SampleDataError) as caught:
        read_sample(sample)
    assert (caught.value.json_path, caught.value.problem) == ("$", problem)
    assert_rejected_without_changes(tmp_path, sample, f"{sample}: $: {problem}")


def test_text_that_is_not_utf8_names_the_offset(tmp_path: Path) -> None:
    sample = tmp_path / "latin1.json"
    sample.write_bytes(b'{"version": "3.6", "application": "bake-tr\xe4cker"}')
    with pytest.raises(SampleDataError) as caught:
        read_sample(sample)
    assert (caught.value.json_path, caught.value.problem) == (
        "$",
        "not UTF-8 text (bad byte at offset 42)",
    )
    assert_rejected_without_changes(tmp_path, sample, str(caught.value))


# --------------------------------------------------------------------------------------------
# Files that cannot be read
# --------------------------------------------------------------------------------------------


def test_a_directory_is_not_a_sample_file(tmp_path: Path) -> None:
    folder = tmp_path / "samples"
    folder.mkdir()
    message = f"{folder} is a directory, not a sample data file"
    with pytest.raises(BadInputError) as caught:
        read_sample(folder)
    assert str(caught.value) == message
    assert not isinstance(caught.value, SampleDataError)
    assert_rejected_without_changes(tmp_path, folder, message)


@pytest.mark.skipif(
    sys.platform == "win32", reason="Windows has no ENOTDIR for a path through a file"
)
def test_a_path_through_a_file_cannot_be_read(tmp_path: Path) -> None:
    # The parent is a regular file: neither "not found" nor "a directory" but ENOTDIR.
    parent = tmp_path / "notes.txt"
    parent.write_text("not a folder")
    sample = parent / "sample.json"
    message = f"cannot read sample data file {sample}: {os.strerror(errno.ENOTDIR)}"
    with pytest.raises(BadInputError) as caught:
        read_sample(sample)
    assert str(caught.value) == message
    assert_rejected_without_changes(tmp_path, sample, message)


def test_an_unreadable_file_names_the_os_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = write_document(tmp_path / "sample.json", valid_document())
    real_read_bytes = Path.read_bytes

    def refuse(path: Path) -> bytes:
        if path == sample:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_read_bytes(path)

    # Root reads any file whatever its mode: the refusal is simulated at the OS boundary.
    monkeypatch.setattr(Path, "read_bytes", refuse)
    message = f"cannot read sample data file {sample}: Permission denied"
    with pytest.raises(BadInputError) as caught:
        read_sample(sample)
    assert str(caught.value) == message
    assert_rejected_without_changes(tmp_path, sample, message)


# --------------------------------------------------------------------------------------------
# The command line shows the same message
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [case for case in BAD_VALUES if case.case_id in ("ref-twice", "snapshot-without-linked")],
    ids=lambda case: case.case_id,
)
def test_load_sample_prints_the_json_path_and_exits_2(tmp_path: Path, case: BadValue) -> None:
    document = valid_document()
    case.mutate(document)
    sample = write_document(tmp_path / "sample.json", document)
    database = tmp_path / "bake.db"

    code, out, err = cli_load_sample(database, sample)

    assert code == EXIT_BAD_INPUT
    assert out == ""
    assert err == f"error: {sample}: {case.json_path}: {case.problem}\n"
    assert not database.exists()
