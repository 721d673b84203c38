"""A snapshot's payload, pinned where it is built: each field, each refusal and each limit.

The migrator's tests see payloads only through the snapshots a run writes; these check
``snapshot_backfill.payload`` directly, at the edges a run rarely meets: a value exactly at its
column's limit, a character that takes four bytes, a line whose ingredient is gone, a recipe
that is not there.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from snapshot_backfill import payload
from snapshot_backfill.models import recipe_ingredients
from snapshot_backfill.payload import ColumnCapacity, PayloadError, check_capacity
from snapshot_backfill.testing import factories
from snapshot_backfill.testing.backends import Backend

# --- the numbers a payload holds ----------------------------------------------------------


@pytest.mark.parametrize("value", [2, "2.5", 0.25])
def test_a_number_is_a_float(value: Any) -> None:
    number = payload._number(value, "x")
    assert number == float(value) and type(number) is float


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("a dozen", "the quantity 'a dozen' is not a number"),
        (None, "the quantity None is not a number"),
        (float("inf"), "the quantity inf is not a finite number (JSON has no NaN/Infinity)"),
        ("-inf", "the quantity '-inf' is not a finite number (JSON has no NaN/Infinity)"),
        (float("nan"), "the quantity nan is not a finite number (JSON has no NaN/Infinity)"),
    ],
)
def test_what_is_not_a_finite_number_is_refused_naming_it(value: Any, says: str) -> None:
    with pytest.raises(PayloadError) as refused:
        payload._number(value, "the quantity")
    assert str(refused.value) == says


# --- recipe_data and one line of ingredients_data -----------------------------------------

RECIPE = SimpleNamespace(
    name="Shortbread",
    category="Cookies",
    source=None,
    yield_quantity=24,
    yield_unit="cookies",
    yield_description="two trays",
    estimated_time_minutes=45,
    notes="Chill first.",
    variant_name=None,
    is_production_ready=1,
)


def test_recipe_data_holds_every_column_in_the_applications_order() -> None:
    data = payload.recipe_data(RECIPE)
    assert list(data) == list(payload.RECIPE_DATA_COLUMNS)
    assert data == {
        "name": "Shortbread",
        "category": "Cookies",
        "source": None,
        "yield_quantity": 24.0,
        "yield_unit": "cookies",
        "yield_description": "two trays",
        "estimated_time_minutes": 45,
        "notes": "Chill first.",
        "variant_name": None,
        "is_production_ready": True,
    }
    assert type(data["yield_quantity"]) is float and data["is_production_ready"] is True


def test_a_recipe_without_a_yield_keeps_it_null_and_a_flag_of_zero_is_false() -> None:
    data = payload.recipe_data(
        SimpleNamespace(**{**vars(RECIPE), "yield_quantity": None, "is_production_ready": 0})
    )
    assert data["yield_quantity"] is None and data["is_production_ready"] is False


def test_a_yield_that_is_no_number_is_refused_naming_the_column() -> None:
    with pytest.raises(PayloadError, match=r"^yield_quantity 'lots' is not a number$"):
        payload.recipe_data(SimpleNamespace(**{**vars(RECIPE), "yield_quantity": "lots"}))


def line(**changes: Any) -> SimpleNamespace:
    values = {
        "ingredient_id": 7,
        "display_name": "Butter, unsalted",
        "slug": "butter_unsalted",
        "quantity": 1,
        "unit": "cup",
        "notes": "softened",
    }
    return SimpleNamespace(**{**values, **changes})


def test_an_ingredient_line_names_its_ingredient() -> None:
    data = payload.ingredient_data(line())
    assert data == {
        "ingredient_id": 7,
        "ingredient_name": "Butter, unsalted",
        "ingredient_slug": "butter_unsalted",
        "quantity": 1.0,
        "unit": "cup",
        "notes": "softened",
    }
    assert list(data) == [
        "ingredient_id",
        "ingredient_name",
        "ingredient_slug",
        "quantity",
        "unit",
        "notes",
    ]
    assert type(data["quantity"]) is float


def test_a_line_whose_ingredient_is_gone_is_unknown_and_a_missing_slug_is_empty() -> None:
    gone = payload.ingredient_data(line(display_name=None, slug=None))
    assert (gone["ingredient_name"], gone["ingredient_slug"]) == ("Unknown", "")
    # The name is what tells a lost ingredient: one that has a name keeps it, slug or not.
    kept = payload.ingredient_data(line(slug=None))
    assert (kept["ingredient_name"], kept["ingredient_slug"]) == ("Butter, unsalted", "")
    nameless = payload.ingredient_data(line(display_name=None))
    assert (nameless["ingredient_name"], nameless["ingredient_slug"]) == ("Unknown", "")


def test_a_line_whose_quantity_is_no_number_is_refused_naming_the_ingredient() -> None:
    with pytest.raises(PayloadError, match=r"^the quantity of ingredient 7 'x' is not a number$"):
        payload.ingredient_data(line(quantity="x"))


# --- what a column holds ------------------------------------------------------------------


def test_no_capacity_is_no_limit() -> None:
    check_capacity("recipe_data", "x" * 100_000, None)
    check_capacity("recipe_data", "x" * 100_000, ColumnCapacity())


def test_a_value_of_exactly_the_column_s_characters_fits_and_one_more_does_not() -> None:
    column = ColumnCapacity(max_chars=10)
    check_capacity("recipe_data", "x" * 10, column)
    with pytest.raises(PayloadError) as refused:
        check_capacity("recipe_data", "x" * 11, column)
    assert str(refused.value) == (
        "its recipe_data is 11 characters of JSON, more than the 10 its column holds"
    )


def test_a_value_of_exactly_the_column_s_bytes_fits_and_one_more_does_not() -> None:
    column = ColumnCapacity(max_bytes=12)
    check_capacity("ingredients_data", "é" * 6, column)  # 12 bytes, 6 characters
    with pytest.raises(PayloadError) as refused:
        check_capacity("ingredients_data", "é" * 6 + "x", column)
    assert str(refused.value) == (
        "its ingredients_data is 13 bytes of JSON, more than the 12 bytes its column holds"
    )


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        # A character takes at most 4 bytes, so only a value longer than a quarter of the limit
        # is encoded to count them; each of these is, by one character or more.
        ("😀" * 4, 15),  # 16 bytes in 4 characters
        ("😀" * 5, 19),  # 20 bytes in 5 characters
        ("é" * 10, 12),  # 20 bytes in 10 characters: under the limit in characters
        ("x" * 13, 12),  # ASCII: bytes and characters agree
    ],
)
def test_bytes_are_counted_in_utf_8_however_few_the_characters(text: str, limit: int) -> None:
    with pytest.raises(PayloadError, match="bytes of JSON"):
        check_capacity("recipe_data", text, ColumnCapacity(max_bytes=limit))


def test_characters_and_bytes_are_each_checked_when_the_column_has_both() -> None:
    both = ColumnCapacity(max_chars=100, max_bytes=12)
    with pytest.raises(PayloadError, match="13 bytes"):
        check_capacity("recipe_data", "x" * 13, both)
    with pytest.raises(PayloadError, match="101 characters"):
        check_capacity("recipe_data", "x" * 101, ColumnCapacity(max_chars=100, max_bytes=10**6))
    check_capacity("recipe_data", "x" * 12, both)


def test_the_catalog_gives_each_payload_columns_capacity(
    backend: Backend, build_state: Any
) -> None:
    build_state("empty")  # our six tables
    with backend.make_engine().connect() as conn:
        capacity = payload.column_capacity(conn)
    if backend.is_sqlite:
        assert capacity == {}  # SQLite stores any length
    elif backend.kind == "postgresql":  # text: a gigabyte, in bytes only
        assert capacity == {
            "recipe_data": ColumnCapacity(None, 1073741824),
            "ingredients_data": ColumnCapacity(None, 1073741824),
        }
    else:  # MariaDB's TEXT: 65,535 bytes
        assert capacity == {
            "recipe_data": ColumnCapacity(65535, 65535),
            "ingredients_data": ColumnCapacity(65535, 65535),
        }


# --- building a batch of payloads ---------------------------------------------------------


def test_each_recipe_asked_for_that_exists_gets_its_payload_once(
    backend: Backend, build_state: Any
) -> None:
    build_state("empty")
    engine = backend.make_engine()
    with factories.factory_session(engine, seed=12):
        bare = factories.RecipeFactory(lines=[])
        full = factories.RecipeFactory(with_missing_ingredient=True)
        # Lines in another order than their ingredients: the recipe's order is its lines'.
        first, second = factories.IngredientFactory(), factories.IngredientFactory()
        reordered = factories.RecipeFactory(lines=[])
        factories.RecipeIngredientFactory(recipe=reordered, ingredient=second)
        factories.RecipeIngredientFactory(recipe=reordered, ingredient=first)
    with engine.connect() as conn:
        asked = [full.id, reordered.id, bare.id, full.id + reordered.id + 100, full.id]
        build = payload.build_payloads(conn, asked)
        assert payload.build_payloads(conn, []) == payload.PayloadBuild()
        in_line_order = (
            conn.execute(
                sa.select(recipe_ingredients.c.ingredient_id)
                .where(recipe_ingredients.c.recipe_id == full.id)
                .order_by(recipe_ingredients.c.id)
            )
            .scalars()
            .all()
        )
    assert build.failures == {}
    # Each recipe that is there, once; not the one that is not.
    assert sorted(build.payloads) == sorted((bare.id, full.id, reordered.id))
    reordered_lines = json.loads(build.payloads[reordered.id].ingredients_data)
    assert [x["ingredient_id"] for x in reordered_lines] == [second.id, first.id]
    assert json.loads(build.payloads[bare.id].ingredients_data) == []
    lines = json.loads(build.payloads[full.id].ingredients_data)
    assert [x["ingredient_id"] for x in lines] == in_line_order
    # One line lost its ingredient (with_missing_ingredient); the others name theirs.
    lost = [x for x in lines if x["ingredient_name"] == "Unknown"]
    assert len(lost) == 1 and lost[0]["ingredient_slug"] == ""
    assert all(x["ingredient_slug"] for x in lines if x not in lost)
    recipe = json.loads(build.payloads[full.id].recipe_data)
    assert recipe == payload.recipe_data(SimpleNamespace(**recipe))


def test_a_recipe_that_cannot_be_built_fails_alone_with_the_reason(
    backend: Backend, build_state: Any
) -> None:
    build_state("empty")
    engine = backend.make_engine()
    with factories.factory_session(engine, seed=3):
        good = factories.RecipeFactory()
        too_long = factories.RecipeFactory(notes="n" * 2000)
        not_finite = factories.RecipeFactory()
    if backend.kind != "mariadb":  # whose DOUBLE holds no infinity
        with engine.begin() as conn:
            conn.execute(
                sa.update(recipe_ingredients)
                .where(recipe_ingredients.c.recipe_id == not_finite.id)
                .values(quantity=float("inf"))
            )
    ids = [good.id, too_long.id, not_finite.id]
    with engine.connect() as conn:
        # Room for any recipe of the factory's, not for 2,000 characters of notes.
        size = len(payload.build_payloads(conn, [good.id]).payloads[good.id].recipe_data)
        limit = {"recipe_data": ColumnCapacity(max_chars=size + 1000)}
        build = payload.build_payloads(conn, ids, limit)
    assert "characters of JSON, more than the" in build.failures[too_long.id]
    if backend.kind == "mariadb":
        assert list(build.payloads) == [good.id, not_finite.id]
        assert build.failures.keys() == {too_long.id}
    else:
        assert list(build.payloads) == [good.id]
        assert build.failures.keys() == {too_long.id, not_finite.id}
        assert "is not a finite number" in build.failures[not_finite.id]
