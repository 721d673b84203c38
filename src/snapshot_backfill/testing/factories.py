"""factory_boy factories for the six bake-tracker tables, with traits for the historical cases.

Every factory persists through the session bound with ``factory_session`` (or ``bound_to``),
per test and per backend; nothing binds a global or the application's session::

    with factory_session(engine, seed=7) as session:     # commits at the end
        recipe = RecipeFactory(variant=True)
        ProductionRunFactory.create_batch(3, recipe=recipe)
        ProductionRunFactory(linked=True)                  # has the application's snapshot
        ProductionRunFactory(orphaned=True)                # its recipe is deleted, FKs off
        RecipeSnapshotFactory(dangling=True)               # snapshot row, run still unlinked

The traits, by the historical case they reproduce (see ``../shared/spec/schema.md``):

``ProductionRunFactory``
    ``orphaned``: the run's recipe row is deleted with foreign-key enforcement off, as
    production lost them (applied when the factory session commits; every run of that recipe
    is orphaned with it). ``linked``: linked to a snapshot the application wrote (is_backfilled
    false, its own scale factor, historical recipe data). ``backfilled``: linked to a snapshot an
    earlier backfill wrote (no journal). ``with_dangling_snapshot``: a snapshot row exists for
    the run, but the run is still unlinked (an interrupted writer).
``RecipeFactory``
    ``archived``; ``variant`` (of a new base recipe: base_recipe_id and variant_name);
    ``without_ingredients``; ``with_missing_ingredient`` (one more line whose ingredient row
    is deleted, foreign keys off, at commit).
``RecipeIngredientFactory``
    ``missing_ingredient``: this line's ingredient row is deleted (foreign keys off) at commit.
``RecipeSnapshotFactory``
    ``dangling``: not linked from its run (by default the run links it); ``backfilled``:
    is_backfilled true, scale 1.0, dated at the run's produced_at.

Values are realistic (bakes, ingredients, units, dates in 2022-2025) and reproducible: the
``seed`` of ``factory_session`` reseeds Faker and factory_boy and restarts every sequence, so
two fresh databases built with one seed hold the same data, ids included.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Optional

import factory
import factory.random
from factory.alchemy import SQLAlchemyModelFactory
from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from snapshot_backfill.database import transaction_without_foreign_keys
from snapshot_backfill.models import (
    FinishedUnit,
    Ingredient,
    ProductionRun,
    Recipe,
    RecipeIngredient,
    RecipeSnapshot,
    YieldMode,
    ingredients,
    recipes,
)

# Dates are absolute, never relative to now: two builds of one state must be identical.
HISTORY_START = datetime(2022, 1, 1)
HISTORY_END = datetime(2025, 6, 30)

BAKES = (
    "Chocolate Chip Cookies",
    "Oatmeal Raisin Cookies",
    "Snickerdoodles",
    "Gingerbread Men",
    "Lemon Bars",
    "Fudge Brownies",
    "Banana Bread",
    "Sourdough Loaf",
    "Cinnamon Rolls",
    "Pumpkin Pie",
    "Crème Brûlée Bars",
    "Pfeffernüsse",
    "Shortbread",
    "Carrot Cake",
    "Peppermint Bark",
    "Biscotti",
)
CATEGORIES = ("Cookies", "Bars", "Breads", "Cakes", "Pies", "Candies")
YIELD_UNITS = ("cookies", "bars", "loaf", "cake", "pie", "rolls", "pieces")
INGREDIENT_NAMES = (
    ("All-Purpose Flour", "Flour"),
    ("Bread Flour", "Flour"),
    ("Unsalted Butter", "Dairy"),
    ("Large Eggs", "Eggs"),
    ("Granulated Sugar", "Sugar"),
    ("Brown Sugar", "Sugar"),
    ("Powdered Sugar", "Sugar"),
    ("Baking Soda", "Leavening"),
    ("Baking Powder", "Leavening"),
    ("Pure Vanilla Extract", "Flavorings"),
    ("Semi-Sweet Chocolate Chips", "Chocolate"),
    ("Dutch-Process Cocoa", "Chocolate"),
    ("Ground Cinnamon", "Spices"),
    ("Ground Ginger", "Spices"),
    ("Rolled Oats", "Grains"),
    ("Whole Milk", "Dairy"),
    ("Kosher Salt", "Salt"),
    ("Molasses", "Sugar"),
    ("Crème Fraîche", "Dairy"),
)
UNITS = ("cup", "tbsp", "tsp", "g", "oz", "each", "lb")
# Quantities exact in binary (MariaDB's FLOAT is single precision).
QUANTITIES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.25, 3.0, 4.0, 250.0)
LINE_NOTES = (None, None, "sifted", "room temperature", "packed", "melted and cooled")

_session: contextvars.ContextVar[Optional[Session]] = contextvars.ContextVar(
    "factory_session", default=None
)
PENDING_DELETIONS = "snapshot_backfill_tests.fk_off_deletions"


def current_session() -> Session:
    """The session factories write to; raises a clear error outside ``factory_session``."""
    session = _session.get()
    if session is None:
        raise RuntimeError(
            "no session bound for the factories: create objects inside "
            "`with factory_session(engine):` (or `with bound_to(session):`)"
        )
    return session


@contextlib.contextmanager
def bound_to(session: Session) -> Iterator[Session]:
    """Make every factory write to ``session`` for the duration of the block."""
    token = _session.set(session)
    try:
        yield session
    finally:
        _session.reset(token)


def reset(seed: int) -> None:
    """Reseed Faker and factory_boy and restart every factory's sequence at 0."""
    factory.random.reseed_random(seed)
    for f in ALL_FACTORIES:
        f.reset_sequence(0)


@contextlib.contextmanager
def factory_session(engine: Engine, *, seed: Optional[int] = None) -> Iterator[Session]:
    """Bind the factories to a new session on ``engine``; commit at the end of the block.

    After the commit, the rows the ``orphaned``/``missing_ingredient`` traits asked to lose are
    deleted with foreign-key enforcement off (``delete_with_foreign_keys_off``). On an error
    nothing is committed. ``seed`` makes the data reproducible (see ``reset``).
    """
    if seed is not None:
        reset(seed)
    with Session(engine, expire_on_commit=False) as session, bound_to(session):
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        deletions = session.info.pop(PENDING_DELETIONS, {})
    if deletions:
        delete_with_foreign_keys_off(engine, deletions)


def schedule_deletion(table_name: str, row_id: int) -> None:
    """Delete a row, foreign keys off, once the current factory session has committed."""
    pending = current_session().info.setdefault(PENDING_DELETIONS, {})
    pending.setdefault(table_name, set()).add(row_id)


def delete_with_foreign_keys_off(engine: Engine, deletions: Mapping[str, Iterable[int]]) -> None:
    """Delete rows by id the way production lost them: with foreign-key enforcement off.

    ``deletions`` maps ``recipes``/``ingredients`` to ids; ``transaction_without_foreign_keys``
    says how each backend switches the checks off. Nothing cascades: the recipe lines and
    finished units of a deleted recipe stay, as they did in production.
    """
    tables = {"recipes": recipes, "ingredients": ingredients}
    with transaction_without_foreign_keys(engine) as conn:
        for name, ids in deletions.items():
            wanted = sorted(ids)
            if wanted:
                conn.execute(delete(tables[name]).where(tables[name].c.id.in_(wanted)))


def slugify(text: str) -> str:
    """``Crème Fraîche (lot 2)`` -> ``cr_me_fra_che_lot_2``: the application's slug shape."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


class BaseFactory(SQLAlchemyModelFactory):
    """Abstract: every factory writes through ``current_session()`` and flushes (ids known)."""

    class Meta:
        abstract = True
        sqlalchemy_session_factory = current_session
        sqlalchemy_session_persistence = "flush"


def _history_date() -> Any:
    return factory.Faker("date_time_between", start_date=HISTORY_START, end_date=HISTORY_END)


def _later(attribute: str, minutes: int = 0) -> Any:
    return factory.LazyAttribute(lambda o: getattr(o, attribute) + timedelta(minutes=minutes))


class IngredientFactory(BaseFactory):
    """A catalog ingredient with a unique display name and slug."""

    class Meta:
        model = Ingredient

    class Params:
        base = factory.Sequence(lambda n: INGREDIENT_NAMES[n % len(INGREDIENT_NAMES)])
        lot = factory.Sequence(lambda n: n // len(INGREDIENT_NAMES))

    display_name = factory.LazyAttribute(lambda o: o.base[0] + (f" (lot {o.lot})" if o.lot else ""))
    slug = factory.LazyAttribute(lambda o: slugify(o.display_name))
    category = factory.LazyAttribute(lambda o: o.base[1])
    hierarchy_level = 2
    is_packaging = False
    description = factory.Faker("sentence", nb_words=6)
    notes = None
    date_added = _history_date()
    last_modified = _later("date_added", 90)


class RecipeIngredientFactory(BaseFactory):
    """A line of a recipe: a quantity of an ingredient."""

    class Meta:
        model = RecipeIngredient

    class Params:
        ingredient_lost = False
        missing_ingredient = factory.Trait(ingredient_lost=True)

    recipe = factory.SubFactory("snapshot_backfill.testing.factories.RecipeFactory", lines=())
    ingredient = factory.SubFactory(IngredientFactory)
    quantity = factory.Faker("random_element", elements=QUANTITIES)
    unit = factory.Faker("random_element", elements=UNITS)
    notes = factory.Faker("random_element", elements=LINE_NOTES)

    lose_ingredient = factory.Maybe(
        "ingredient_lost",
        factory.PostGeneration(
            lambda obj, create, extracted, **_: schedule_deletion("ingredients", obj.ingredient_id)
        ),
    )


class RecipeFactory(BaseFactory):
    """A current recipe with two to five ingredient lines."""

    class Meta:
        model = Recipe

    class Params:
        base_recipe = None
        with_missing_ingredient = False
        archived = factory.Trait(is_archived=True)
        variant = factory.Trait(
            base_recipe=factory.SubFactory("snapshot_backfill.testing.factories.RecipeFactory"),
            variant_name=factory.Faker(
                "random_element", elements=("Gluten-Free", "Half Batch", "Holiday", "Vegan")
            ),
        )
        without_ingredients = factory.Trait(lines=())

    name = factory.Faker("random_element", elements=BAKES)
    category = factory.Faker("random_element", elements=CATEGORIES)
    source = factory.Faker(
        "random_element",
        elements=(None, "Grandma's recipe card", "King Arthur Baking", "https://example.com/r/42"),
    )
    yield_quantity = factory.Faker("random_element", elements=(1.0, 12.0, 24.0, 36.0, 2.5))
    yield_unit = factory.Faker("random_element", elements=YIELD_UNITS)
    yield_description = factory.Faker(
        "random_element", elements=(None, "about 3 dozen", "one 9x13 pan", "two loaves")
    )
    estimated_time_minutes = factory.Faker("random_int", min=15, max=240, step=5)
    notes = factory.Faker(
        "random_element", elements=(None, "Chill the dough overnight.", 'Say "Grüß Gott" ✓')
    )
    is_archived = False
    base_recipe_id = factory.LazyAttribute(lambda o: o.base_recipe.id if o.base_recipe else None)
    variant_name = None
    is_production_ready = factory.Faker("pybool")
    date_added = _history_date()
    last_modified = _later("date_added", 60 * 24)

    lines = factory.RelatedFactoryList(
        RecipeIngredientFactory,
        factory_related_name="recipe",
        size=lambda: factory.random.randgen.randint(2, 5),
    )
    missing_line = factory.Maybe(
        "with_missing_ingredient",
        factory.RelatedFactory(
            RecipeIngredientFactory, factory_related_name="recipe", missing_ingredient=True
        ),
    )


class FinishedUnitFactory(BaseFactory):
    """What a recipe's batches become (the runs' finished_unit_id)."""

    class Meta:
        model = FinishedUnit

    class Params:
        recipe = factory.SubFactory(RecipeFactory)

    slug = factory.Sequence(lambda n: f"finished_unit_{n}")
    display_name = factory.LazyAttribute(lambda o: f"{o.recipe.name} ({o.recipe.yield_unit})")
    recipe_id = factory.SelfAttribute("recipe.id")
    yield_mode = YieldMode.DISCRETE_COUNT
    items_per_batch = factory.Faker("random_int", min=6, max=48)
    item_unit = factory.SelfAttribute("recipe.yield_unit")
    unit_cost = factory.LazyFunction(lambda: Decimal(factory.random.randgen.randint(5, 400)) / 100)
    inventory_count = factory.Faker("random_int", min=0, max=120)
    category = factory.SelfAttribute("recipe.category")


class ProductionRunFactory(BaseFactory):
    """A production run recorded before snapshots existed: unlinked, its recipe present."""

    class Meta:
        model = ProductionRun

    class Params:
        recipe = factory.SubFactory(RecipeFactory)
        finished_unit = factory.SubFactory(
            FinishedUnitFactory, recipe=factory.SelfAttribute("..recipe")
        )
        recipe_lost = False
        snapshot_kind = None
        orphaned = factory.Trait(recipe_lost=True)
        linked = factory.Trait(snapshot_kind="application")
        backfilled = factory.Trait(snapshot_kind="backfilled")
        with_dangling_snapshot = factory.Trait(snapshot_kind="dangling")

    recipe_id = factory.SelfAttribute("recipe.id")
    finished_unit_id = factory.SelfAttribute("finished_unit.id")
    event_id = None
    recipe_snapshot_id = None
    num_batches = factory.Faker("random_int", min=1, max=6)
    expected_yield = factory.LazyAttribute(lambda o: o.num_batches * 24)
    loss_quantity = factory.Faker("random_element", elements=(0, 0, 0, 1, 2, 5))
    actual_yield = factory.LazyAttribute(lambda o: max(0, o.expected_yield - o.loss_quantity))
    produced_at = _history_date()
    # Recorded when produced: history, as a backfill finds it (not a run of the last minutes).
    created_at = factory.SelfAttribute("produced_at")
    notes = factory.Faker(
        "random_element", elements=(None, "Holiday order", "Bake sale", "Oven ran hot")
    )
    production_status = "complete"
    total_ingredient_cost = factory.LazyFunction(
        lambda: Decimal(factory.random.randgen.randint(200, 9000)) / 100
    )
    per_unit_cost = factory.LazyAttribute(
        lambda o: (o.total_ingredient_cost / max(o.expected_yield, 1)).quantize(Decimal("0.0001"))
    )

    snapshot = factory.Maybe(
        factory.LazyAttribute(lambda o: o.snapshot_kind is not None),
        factory.RelatedFactory(
            "snapshot_backfill.testing.factories.RecipeSnapshotFactory",
            factory_related_name="run",
            backfilled=factory.LazyAttribute(
                lambda o: o.factory_parent.snapshot_kind == "backfilled"
            ),
            dangling=factory.LazyAttribute(lambda o: o.factory_parent.snapshot_kind == "dangling"),
        ),
    )
    lose_recipe = factory.Maybe(
        "recipe_lost",
        factory.PostGeneration(
            lambda obj, create, extracted, **_: schedule_deletion("recipes", obj.recipe_id)
        ),
    )


def _recipe_name(recipe_id: int) -> str:
    recipe = current_session().get(Recipe, recipe_id)
    return recipe.name if recipe is not None else "Deleted recipe"


def _historical_recipe_data(o: Any) -> str:
    """What the application recorded at production time: not the recipe's current data."""
    return json.dumps(
        {
            "name": f"{_recipe_name(o.run.recipe_id)} (as baked)",
            "category": "Cookies",
            "source": None,
            "yield_quantity": 24.0,
            "yield_unit": "cookies",
            "yield_description": None,
            "estimated_time_minutes": 45,
            "notes": "recorded by the application",
            "variant_name": None,
            "is_production_ready": True,
        }
    )


def _historical_ingredients_data() -> str:
    return json.dumps(
        [
            {
                "ingredient_id": 1,
                "ingredient_name": "All-Purpose Flour",
                "ingredient_slug": "all_purpose_flour",
                "quantity": 2.25,
                "unit": "cup",
                "notes": None,
            }
        ]
    )


def _link(snapshot: RecipeSnapshot) -> None:
    session = current_session()
    run = session.get(ProductionRun, snapshot.production_run_id)
    assert run is not None, f"snapshot {snapshot.id}: run {snapshot.production_run_id} not found"
    run.recipe_snapshot_id = snapshot.id
    session.flush()


class RecipeSnapshotFactory(BaseFactory):
    """A snapshot the application wrote at production time, linked from its run."""

    class Meta:
        model = RecipeSnapshot

    class Params:
        run = factory.SubFactory(ProductionRunFactory)
        linked_from_run = True
        dangling = factory.Trait(linked_from_run=False)
        backfilled = factory.Trait(
            is_backfilled=True,
            scale_factor=1.0,
            snapshot_date=factory.SelfAttribute("run.produced_at"),
        )

    recipe_id = factory.SelfAttribute("run.recipe_id")
    production_run_id = factory.SelfAttribute("run.id")
    scale_factor = factory.Faker("random_element", elements=(0.5, 1.5, 2.0, 3.0))
    # The application snapshots at production time: a few minutes after produced_at.
    snapshot_date = factory.LazyAttribute(lambda o: o.run.produced_at + timedelta(minutes=3))
    recipe_data = factory.LazyAttribute(_historical_recipe_data)
    ingredients_data = factory.LazyFunction(_historical_ingredients_data)
    is_backfilled = False

    link = factory.Maybe(
        "linked_from_run", factory.PostGeneration(lambda obj, *_, **__: _link(obj))
    )


ALL_FACTORIES = (
    IngredientFactory,
    RecipeIngredientFactory,
    RecipeFactory,
    FinishedUnitFactory,
    ProductionRunFactory,
    RecipeSnapshotFactory,
)
