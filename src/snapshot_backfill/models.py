"""The six bake-tracker tables the backfill reads and writes, as the application defines them.

Column-for-column compatible with the application's models (names, types, nullability, unique
keys, check constraints, on-delete rules and index names: see ``../shared/spec/schema.md`` and
the application's DDL). Like the application, ``uuid``/``created_at``/``updated_at`` are filled
client-side and have no server default, so a raw INSERT that omits them fails, as it does on a
real database.
"""

from __future__ import annotations

import enum
import uuid as uuid_module
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Optional

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utc_now() -> datetime:
    """Now in UTC, naive, as the application stores its DATETIME columns."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_uuid() -> str:
    """A uuid4 string, as the application writes into every ``uuid`` column."""
    return str(uuid_module.uuid4())


class Base(DeclarativeBase):
    """Declarative base with its own metadata (never the application's)."""

    metadata = MetaData()


class CommonColumns:
    """The id/uuid/created_at/updated_at columns every application table carries."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), nullable=False, default=new_uuid)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime, nullable=False, default=utc_now, onupdate=utc_now
    )


class YieldMode(enum.Enum):
    """How a finished unit's yield is counted (stored by name, as the application does)."""

    DISCRETE_COUNT = "discrete_count"
    BATCH_PORTION = "batch_portion"


class Ingredient(CommonColumns, Base):
    __tablename__ = "ingredients"
    __table_args__ = (
        CheckConstraint("hierarchy_level IN (0, 1, 2)", name="ck_ingredient_hierarchy_level"),
        Index("idx_ingredient_parent", "parent_ingredient_id"),
        Index("ix_ingredients_parent_ingredient_id", "parent_ingredient_id"),
        Index("idx_ingredient_hierarchy_level", "hierarchy_level"),
        Index("ix_ingredients_uuid", "uuid", unique=True),
        Index("ix_ingredients_slug", "slug", unique=True),
        Index("ix_ingredients_display_name", "display_name", unique=True),
        Index("ix_ingredients_is_packaging", "is_packaging"),
        Index("ix_ingredients_foodon_id", "foodon_id"),
        Index("ix_ingredients_category", "category"),
        Index("idx_ingredient_display_name", "display_name"),
        Index("idx_ingredient_category", "category"),
        Index("idx_ingredient_is_packaging", "is_packaging"),
    )

    display_name: Mapped[str] = mapped_column(String(200), nullable=False)
    slug: Mapped[Optional[str]] = mapped_column(String(200))
    parent_ingredient_id: Mapped[Optional[int]] = mapped_column(ForeignKey("ingredients.id"))
    hierarchy_level: Mapped[int] = mapped_column(Integer, nullable=False, default=2)
    category: Mapped[str] = mapped_column(String(100), nullable=False)
    is_packaging: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    description: Mapped[Optional[str]] = mapped_column(Text)
    notes: Mapped[Optional[str]] = mapped_column(Text)
    foodon_id: Mapped[Optional[str]] = mapped_column(String(50))
    density_volume_value: Mapped[Optional[float]] = mapped_column(Float)
    density_volume_unit: Mapped[Optional[str]] = mapped_column(String(20))
    density_weight_value: Mapped[Optional[float]] = mapped_column(Float)
    density_weight_unit: Mapped[Optional[str]] = mapped_column(String(20))
    date_added: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utc_now)
    last_modified: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utc_now)


class Recipe(CommonColumns, Base):
    __tablename__ = "recipes"
    __table_args__ = (
        # MariaDB/MySQL refuse a CHECK on a column an ON DELETE SET NULL key writes (error
        # 1901), so the application's models cannot have it there either; it exists elsewhere.
        CheckConstraint(
            "base_recipe_id IS NULL OR base_recipe_id != id", name="ck_recipe_no_self_variant"
        ).ddl_if(dialect=("sqlite", "postgresql")),  # type: ignore[arg-type]  # tuple is documented
        Index("ix_recipes_is_archived", "is_archived"),
        Index("ix_recipes_base_recipe_id", "base_recipe_id"),
        Index("ix_recipes_is_production_ready", "is_production_ready"),
        Index("ix_recipes_uuid", "uuid", unique=True),
        Index("idx_recipe_category", "category"),
        Index("ix_recipes_name", "name"),
        Index("ix_recipes_category", "category"),
        Index("idx_recipe_name", "name"),
    )

    name: Mapped[str] = mapped_column(String(200), nullable=False)
    category: Mapped[str] = mapped_column(String(100), nullable=False)
    source: Mapped[Optional[str]] = mapped_column(String(500))
    yield_quantity: Mapped[float] = mapped_column(Float, nullable=False)
    yield_unit: Mapped[str] = mapped_column(String(50), nullable=False)
    yield_description: Mapped[Optional[str]] = mapped_column(String(200))
    estimated_time_minutes: Mapped[Optional[int]] = mapped_column(Integer)
    notes: Mapped[Optional[str]] = mapped_column(Text)
    is_archived: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    base_recipe_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("recipes.id", ondelete="SET NULL")
    )
    variant_name: Mapped[Optional[str]] = mapped_column(String(100))
    is_production_ready: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    date_added: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utc_now)
    last_modified: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utc_now)

    recipe_ingredients: Mapped[list[RecipeIngredient]] = relationship(
        back_populates="recipe", order_by="RecipeIngredient.id", passive_deletes=True
    )


class RecipeIngredient(CommonColumns, Base):
    __tablename__ = "recipe_ingredients"
    __table_args__ = (
        Index("ix_recipe_ingredients_uuid", "uuid", unique=True),
        Index("idx_recipe_ingredient_recipe", "recipe_id"),
        Index("idx_recipe_ingredient_ingredient", "ingredient_id"),
    )

    recipe_id: Mapped[int] = mapped_column(
        ForeignKey("recipes.id", ondelete="CASCADE"), nullable=False
    )
    ingredient_id: Mapped[int] = mapped_column(
        ForeignKey("ingredients.id", ondelete="RESTRICT"), nullable=False
    )
    quantity: Mapped[float] = mapped_column(Float, nullable=False)
    unit: Mapped[str] = mapped_column(String(50), nullable=False)
    notes: Mapped[Optional[str]] = mapped_column(String(500))

    recipe: Mapped[Recipe] = relationship(back_populates="recipe_ingredients")
    ingredient: Mapped[Optional[Ingredient]] = relationship()


class FinishedUnit(CommonColumns, Base):
    __tablename__ = "finished_units"
    __table_args__ = (
        UniqueConstraint("slug", name="uq_finished_unit_slug"),
        CheckConstraint("unit_cost >= 0", name="ck_finished_unit_unit_cost_non_negative"),
        CheckConstraint("inventory_count >= 0", name="ck_finished_unit_inventory_non_negative"),
        CheckConstraint(
            "items_per_batch IS NULL OR items_per_batch > 0",
            name="ck_finished_unit_items_per_batch_positive",
        ),
        CheckConstraint(
            "batch_percentage IS NULL OR (batch_percentage > 0 AND batch_percentage <= 100)",
            name="ck_finished_unit_batch_percentage_valid",
        ),
        Index("idx_finished_unit_inventory", "inventory_count"),
        Index("idx_finished_unit_created_at", "created_at"),
        Index("idx_finished_unit_category", "category"),
        Index("ix_finished_units_slug", "slug", unique=True),
        Index("idx_finished_unit_recipe_inventory", "recipe_id", "inventory_count"),
        Index("idx_finished_unit_slug", "slug"),
        Index("idx_finished_unit_recipe", "recipe_id"),
        Index("ix_finished_units_category", "category"),
        Index("idx_finished_unit_display_name", "display_name"),
        Index("ix_finished_units_uuid", "uuid", unique=True),
        Index("ix_finished_units_display_name", "display_name"),
    )

    slug: Mapped[str] = mapped_column(String(100), nullable=False)
    display_name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[Optional[str]] = mapped_column(Text)
    recipe_id: Mapped[int] = mapped_column(
        ForeignKey("recipes.id", ondelete="RESTRICT"), nullable=False
    )
    yield_mode: Mapped[YieldMode] = mapped_column(Enum(YieldMode), nullable=False)
    items_per_batch: Mapped[Optional[int]] = mapped_column(Integer)
    item_unit: Mapped[Optional[str]] = mapped_column(String(50))
    batch_percentage: Mapped[Optional[Decimal]] = mapped_column(Numeric(5, 2))
    portion_description: Mapped[Optional[str]] = mapped_column(String(200))
    unit_cost: Mapped[Decimal] = mapped_column(Numeric(10, 4), nullable=False, default=Decimal("0"))
    inventory_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    category: Mapped[Optional[str]] = mapped_column(String(100))
    production_notes: Mapped[Optional[str]] = mapped_column(Text)
    notes: Mapped[Optional[str]] = mapped_column(Text)


class ProductionRun(CommonColumns, Base):
    __tablename__ = "production_runs"
    __table_args__ = (
        CheckConstraint("num_batches > 0", name="ck_production_run_batches_positive"),
        CheckConstraint(
            "expected_yield >= 0", name="ck_production_run_expected_yield_non_negative"
        ),
        CheckConstraint("actual_yield >= 0", name="ck_production_run_actual_yield_non_negative"),
        CheckConstraint(
            "total_ingredient_cost >= 0", name="ck_production_run_total_cost_non_negative"
        ),
        CheckConstraint("per_unit_cost >= 0", name="ck_production_run_per_unit_cost_non_negative"),
        CheckConstraint("loss_quantity >= 0", name="ck_production_run_loss_non_negative"),
        Index("ix_production_runs_recipe_snapshot_id", "recipe_snapshot_id"),
        Index("idx_production_run_produced_at", "produced_at"),
        Index("ix_production_runs_event_id", "event_id"),
        Index("ix_production_runs_uuid", "uuid", unique=True),
        Index("idx_production_run_event", "event_id"),
        Index("idx_production_run_recipe", "recipe_id"),
        Index("idx_production_run_status", "production_status"),
        Index("idx_production_run_finished_unit", "finished_unit_id"),
        Index("idx_production_run_snapshot", "recipe_snapshot_id"),
    )

    recipe_id: Mapped[int] = mapped_column(
        ForeignKey("recipes.id", ondelete="RESTRICT"), nullable=False
    )
    finished_unit_id: Mapped[int] = mapped_column(
        ForeignKey("finished_units.id", ondelete="RESTRICT"), nullable=False
    )
    # A foreign key to events.id in the application; that table is outside our scope.
    event_id: Mapped[Optional[int]] = mapped_column(Integer)
    # One side of the production_runs <-> recipe_snapshots cycle: added after both tables
    # exist (use_alter), and dropped first, so create_all/drop_all work on every backend.
    recipe_snapshot_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey(
            "recipe_snapshots.id",
            ondelete="RESTRICT",
            use_alter=True,
            name="fk_production_runs_recipe_snapshot_id",
        )
    )
    num_batches: Mapped[int] = mapped_column(Integer, nullable=False)
    expected_yield: Mapped[int] = mapped_column(Integer, nullable=False)
    actual_yield: Mapped[int] = mapped_column(Integer, nullable=False)
    produced_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    notes: Mapped[Optional[str]] = mapped_column(Text)
    production_status: Mapped[str] = mapped_column(String(20), nullable=False, default="complete")
    loss_quantity: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    total_ingredient_cost: Mapped[Decimal] = mapped_column(
        Numeric(10, 4), nullable=False, default=Decimal("0")
    )
    per_unit_cost: Mapped[Decimal] = mapped_column(
        Numeric(10, 4), nullable=False, default=Decimal("0")
    )


class RecipeSnapshot(CommonColumns, Base):
    __tablename__ = "recipe_snapshots"
    __table_args__ = (
        UniqueConstraint("production_run_id"),
        Index("idx_recipe_snapshot_date", "snapshot_date"),
        Index("idx_recipe_snapshot_production_run", "production_run_id"),
        Index("idx_recipe_snapshot_recipe", "recipe_id"),
        Index("ix_recipe_snapshots_uuid", "uuid", unique=True),
    )

    recipe_id: Mapped[int] = mapped_column(
        ForeignKey("recipes.id", ondelete="RESTRICT"), nullable=False
    )
    production_run_id: Mapped[int] = mapped_column(
        ForeignKey("production_runs.id", ondelete="CASCADE"), nullable=False
    )
    scale_factor: Mapped[float] = mapped_column(Float, nullable=False, default=1.0)
    snapshot_date: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    recipe_data: Mapped[str] = mapped_column(Text, nullable=False)
    ingredients_data: Mapped[str] = mapped_column(Text, nullable=False)
    is_backfilled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


@event.listens_for(Base.metadata, "after_create")
@event.listens_for(Base.metadata, "after_drop")
def _keep_cycle_key_inline(target: MetaData, connection: Any, **kw: Any) -> None:
    """Undo SQLAlchemy's process-wide mark on the use_alter key after a create or drop.

    Creating or dropping the cycle's key by ALTER (PostgreSQL, MariaDB) marks it "never
    inline" for the rest of the process, so a later create_all on SQLite, where the key can
    only be inline, would silently leave it out.
    """
    for table in target.tables.values():
        for key in table.foreign_key_constraints:
            if key.use_alter:
                key._create_rule = None


APPLICATION_TABLES = tuple(Base.metadata.sorted_tables)
APPLICATION_TABLE_NAMES = frozenset(t.name for t in APPLICATION_TABLES)

ingredients: Table = Base.metadata.tables["ingredients"]
recipes: Table = Base.metadata.tables["recipes"]
recipe_ingredients: Table = Base.metadata.tables["recipe_ingredients"]
finished_units: Table = Base.metadata.tables["finished_units"]
production_runs: Table = Base.metadata.tables["production_runs"]
recipe_snapshots: Table = Base.metadata.tables["recipe_snapshots"]


# What the snapshot feature added to the application's schema; everything else predates it.
SNAPSHOT_ERA_TABLES = ("recipe_snapshots",)
SNAPSHOT_ERA_COLUMNS = {
    "recipes": ("base_recipe_id", "variant_name", "is_production_ready"),
    "production_runs": ("recipe_snapshot_id",),
}


def pre_snapshot_metadata() -> MetaData:
    """Build the six tables as they were before the snapshot feature (for old databases).

    The same tables, less ``recipe_snapshots`` and the columns of ``SNAPSHOT_ERA_COLUMNS``
    with the indexes, checks and foreign keys that use them, as the application's
    pre-snapshot schema has them.
    """
    metadata = MetaData()
    for table in Base.metadata.sorted_tables:
        if table.name in SNAPSHOT_ERA_TABLES:
            continue
        dropped = set(SNAPSHOT_ERA_COLUMNS.get(table.name, ()))
        old = Table(
            table.name,
            metadata,
            *(column._copy() for column in table.columns if column.name not in dropped),
        )
        # Column._copy() leaves foreign keys behind: copy each whose columns survive, in the
        # models' order (MariaDB numbers unnamed keys in creation order).
        for key in sorted(table.foreign_key_constraints, key=lambda k: k._creation_order):
            if not {c.name for c in key.columns} & dropped:
                old.append_constraint(key._copy())
        for constraint in table.constraints:
            if isinstance(constraint, CheckConstraint):
                text = str(constraint.sqltext)
                if not any(name in text for name in dropped):
                    old.append_constraint(CheckConstraint(text, name=constraint.name))
            elif isinstance(constraint, UniqueConstraint):
                columns = [c.name for c in constraint.columns]
                if not set(columns) & dropped:
                    old.append_constraint(UniqueConstraint(*columns, name=constraint.name))
        for index in table.indexes:
            names = [c.name for c in index.columns]
            if not set(names) & dropped:
                Index(index.name, *(old.c[name] for name in names), unique=index.unique)
    return metadata
