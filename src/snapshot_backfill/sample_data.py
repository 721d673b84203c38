"""Read bake-tracker sample data and load it into an empty database.

A sample file is an export of the application (``version`` "3.x", ``exported_at``,
``application`` "bake-tracker" and entity arrays) plus one extension key of ours,
``snapshot_backfill``, holding the production history an export cannot express: snapshots
the application already wrote (linked to their run, or left unlinked by an interrupted
writer), recipes deleted under existing runs and ingredient rows deleted under recipe lines.
``test_data/README.md`` documents the format, the defaults and the expected counts.

``read_sample`` parses and validates a file (every problem names the file and the JSON path);
``load_sample`` writes it into a database that does not have our tables yet, in one
transaction, reproducing the deleted rows the way production got them: with foreign-key
enforcement off.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, NoReturn, Optional, Union

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError

from .database import (
    ForeignKeysError,
    describe_db_error,
    display_url,
    foreign_keys_off,
    is_sqlite,
    open_engine,
    resolve_url,
    sqlite_path,
    sqlite_uri,
    write_transaction,
)
from .errors import (
    EXIT_FAILED,
    BackfillError,
    BadInputError,
    DatabaseUnavailableError,
    SampleDataError,
)
from .models import Base, YieldMode, new_uuid, utc_now
from .payload import RECIPE_DATA_COLUMNS

__all__ = [
    "DEFAULT_SAMPLE_PATH",
    "EXTENSION_KEY",
    "JOURNAL_TABLE",
    "ExpectedCounts",
    "FinishedUnitEntry",
    "IngredientEntry",
    "LoadReport",
    "RecipeEntry",
    "RecipeLine",
    "RunEntry",
    "SampleData",
    "SampleHeader",
    "SampleLoadError",
    "SnapshotEntry",
    "load_sample",
    "load_sample_file",
    "read_sample",
]

PathArg = Union[str, "os.PathLike[str]"]

DEFAULT_SAMPLE_PATH = Path(__file__).parent / "data" / "sample_data.json"
"""The sample shipped with the package (a copy of ``test_data/sample_data.json``)."""

EXTENSION_KEY = "snapshot_backfill"
EXTENSION_FORMAT = 1
APPLICATION = "bake-tracker"

# The migrator's own bookkeeping table: a database that has it has been migrated before, so
# loading sample data into it would mix fixtures with real history.
JOURNAL_TABLE = "snapshot_backfill_journal"

# Documented defaults (test_data/README.md, "Defaults") for what the tables require and a file
# may omit.
DEFAULT_YIELD_QUANTITY = 1.0
DEFAULT_YIELD_UNIT = "batch"
DEFAULT_CATEGORY = "Uncategorized"
DEFAULT_PRODUCTION_STATUS = "complete"
DEFAULT_HIERARCHY_LEVEL = 2

_ENTITY_ARRAYS = ("ingredients", "recipes", "finished_units", "production_runs")
_HEADER_KEYS = ("version", "exported_at", "application")
_VERSION = re.compile(r"3\.\d+(?:[.\-+][0-9A-Za-z.\-+]*)?")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COST_QUANTUM = Decimal("0.0001")

_REQUIRED_TABLES = ("ingredients", "recipes", "recipe_ingredients", "finished_units")
_RUNS = "production_runs"
_SNAPSHOTS = "recipe_snapshots"


class SampleLoadError(BackfillError):
    """The database refused the sample data; the load was rolled back and left nothing behind."""

    exit_code = EXIT_FAILED


# --------------------------------------------------------------------------------------------
# The parsed file
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleHeader:
    """The export header: format version, export time (naive UTC) and producing application."""

    version: str
    exported_at: datetime
    application: str


@dataclass(frozen=True)
class IngredientEntry:
    """One ``ingredients`` row to write; ``minimal`` when only a recipe line named the slug."""

    slug: str
    columns: Mapping[str, Any]
    json_path: str
    minimal: bool = False


@dataclass(frozen=True)
class RecipeLine:
    """One ``recipe_ingredients`` row to write, naming its ingredient by slug."""

    ingredient_slug: str
    quantity: float
    unit: str
    notes: Optional[str]
    json_path: str


@dataclass(frozen=True)
class RecipeEntry:
    """One ``recipes`` row to write; ``deleted`` rows are removed again once runs reference them.

    ``slug`` is the file's key for the recipe (the table has no slug column): the entry's
    ``slug``, or one derived from its name.
    """

    slug: str
    columns: Mapping[str, Any]
    lines: tuple[RecipeLine, ...]
    base_recipe_slug: Optional[str]
    json_path: str
    deleted: bool = False


@dataclass(frozen=True)
class FinishedUnitEntry:
    """One ``finished_units`` row to write; ``defaulted`` when the loader made it for runs."""

    slug: str
    recipe_slug: str
    columns: Mapping[str, Any]
    json_path: str
    defaulted: bool = False


@dataclass(frozen=True)
class RunEntry:
    """One ``production_runs`` row to write; ``ref`` is how the extension names it."""

    index: int
    ref: Optional[str]
    recipe_slug: str
    finished_unit_slug: str
    columns: Mapping[str, Any]
    json_path: str


@dataclass(frozen=True)
class SnapshotEntry:
    """A ``recipe_snapshots`` row the application wrote for a run, linked to it or not."""

    run_index: int
    linked: bool
    scale_factor: float
    snapshot_date: datetime
    is_backfilled: bool
    recipe_data: Mapping[str, Any]
    json_path: str


@dataclass(frozen=True)
class ExpectedCounts:
    """What a backfill should find in the loaded database (see test_data/README.md).

    ``already_linked``: runs whose ``recipe_snapshot_id`` is set; ``link_existing``: unlinked
    runs that already have a snapshot row; ``to_migrate``: unlinked runs whose recipe exists
    and that have no snapshot; ``orphaned``: unlinked runs with no snapshot row whose recipe
    row is gone. The ``*_refs``
    tuples name the runs that have a ``ref``.
    """

    total_runs: int
    already_linked: int
    link_existing: int
    to_migrate: int
    orphaned: int
    already_linked_refs: tuple[str, ...] = ()
    link_existing_refs: tuple[str, ...] = ()
    orphaned_refs: tuple[str, ...] = ()

    @property
    def work(self) -> int:
        """The runs a run links: to new snapshots and to existing ones."""
        return self.to_migrate + self.link_existing

    def to_dict(self) -> dict[str, Any]:
        """Return the counts as plain JSON-ready values."""
        return {
            "total_runs": self.total_runs,
            "already_linked": self.already_linked,
            "link_existing": self.link_existing,
            "to_migrate": self.to_migrate,
            "orphaned": self.orphaned,
            "already_linked_refs": list(self.already_linked_refs),
            "link_existing_refs": list(self.link_existing_refs),
            "orphaned_refs": list(self.orphaned_refs),
        }


@dataclass(frozen=True)
class SampleData:
    """A validated sample file, ready to load (``read_sample`` builds it)."""

    source: str
    header: SampleHeader
    ingredients: tuple[IngredientEntry, ...]
    recipes: tuple[RecipeEntry, ...]
    finished_units: tuple[FinishedUnitEntry, ...]
    production_runs: tuple[RunEntry, ...]
    recipe_snapshots: tuple[SnapshotEntry, ...]
    deleted_ingredients: tuple[str, ...]
    ignored_arrays: Mapping[str, int]
    ignored_fields: Mapping[str, tuple[str, ...]]
    notes: tuple[str, ...]

    @property
    def deleted_recipes(self) -> tuple[str, ...]:
        """Return the slugs of the recipes the extension deletes."""
        return tuple(recipe.slug for recipe in self.recipes if recipe.deleted)

    @property
    def minimal_ingredients(self) -> tuple[str, ...]:
        """Return the slugs that got a minimal ingredient row (no ``ingredients`` entry)."""
        return tuple(entry.slug for entry in self.ingredients if entry.minimal)

    @property
    def default_finished_units(self) -> tuple[str, ...]:
        """Return the slugs of the finished units the loader made for runs that needed one."""
        return tuple(unit.slug for unit in self.finished_units if unit.defaulted)

    def expected_counts(self, *, with_snapshots: bool = True) -> ExpectedCounts:
        """Count what a backfill should find once this sample is loaded.

        ``with_snapshots=False`` describes a load into the pre-snapshot schema, where the
        extension's snapshots are skipped and every run whose recipe exists is to migrate.
        """
        deleted = set(self.deleted_recipes)
        snapshots = {s.run_index: s for s in self.recipe_snapshots} if with_snapshots else {}
        linked: list[RunEntry] = []
        unlinked_with_snapshot: list[RunEntry] = []
        orphaned: list[RunEntry] = []
        to_migrate = 0
        # The backfill's order: a run's link and snapshot row first, its recipe only when a
        # snapshot would have to be made (validation refuses a snapshot for a run of a
        # deleted recipe, so the order matters only to keep the two readings one).
        for run in self.production_runs:
            snapshot = snapshots.get(run.index)
            if snapshot is not None and snapshot.linked:
                linked.append(run)
            elif snapshot is not None:
                unlinked_with_snapshot.append(run)
            elif run.recipe_slug in deleted:
                orphaned.append(run)
            else:
                to_migrate += 1

        def refs(runs: Iterable[RunEntry]) -> tuple[str, ...]:
            return tuple(run.ref for run in runs if run.ref is not None)

        return ExpectedCounts(
            total_runs=len(self.production_runs),
            already_linked=len(linked),
            link_existing=len(unlinked_with_snapshot),
            to_migrate=to_migrate,
            orphaned=len(orphaned),
            already_linked_refs=refs(linked),
            link_existing_refs=refs(unlinked_with_snapshot),
            orphaned_refs=refs(orphaned),
        )


# --------------------------------------------------------------------------------------------
# Reading and validating
# --------------------------------------------------------------------------------------------


def read_sample(path: PathArg) -> SampleData:
    """Parse and validate a sample file.

    Raises:
        BadInputError: the file is missing or unreadable.
        SampleDataError: the file is not valid sample data; names the file and the JSON path
            of the first bad value (e.g. ``$.recipes[3].ingredients[1].quantity``).
    """
    source = os.fspath(path)
    file = Path(source)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"sample data file not found: {source}") from None
    except OSError as exc:
        # Windows will not open a directory ("Permission denied") where POSIX says EISDIR.
        if isinstance(exc, IsADirectoryError) or (sys.platform == "win32" and file.is_dir()):
            raise BadInputError(f"{source} is a directory, not a sample data file") from None
        raise BadInputError(f"cannot read sample data file {source}: {exc.strerror}") from None
    try:
        # utf-8-sig: editors on Windows like to prepend a byte-order mark.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SampleDataError(
            source, "$", f"not UTF-8 text (bad byte at offset {exc.start})"
        ) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SampleDataError(
            source, "$", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    return _Parser(source).parse(document)


def _json_path(parent: str, key: Union[str, int]) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if _IDENTIFIER.fullmatch(key):
        return f"{parent}.{key}"
    return f"{parent}[{json.dumps(key)}]"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _slugify(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_")


def _column_length(table: str, column: str) -> Optional[int]:
    length = getattr(Base.metadata.tables[table].c[column].type, "length", None)
    return length if isinstance(length, int) else None


def _parse_timestamp(text: str) -> Optional[datetime]:
    value = text.strip()
    if value[-1:] in ("Z", "z"):
        # Python 3.9's fromisoformat does not read the "Z" the application writes.
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def _money(value: float) -> Decimal:
    return Decimal(str(value)).quantize(_COST_QUANTUM, rounding=ROUND_HALF_UP)


class _Parser:
    """Validate one document; every error names the file and the JSON path of the bad value."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.notes: list[str] = []
        self.ignored_fields: dict[str, set[str]] = {}

    # -- primitives --------------------------------------------------------------------------

    def fail(self, path: str, problem: str) -> NoReturn:
        raise SampleDataError(self.source, path, problem)

    def object(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, f"expected an object, found {_type_name(value)}")
        return value

    def array(self, value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            self.fail(path, f"expected an array, found {_type_name(value)}")
        return value

    def optional_array(self, obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
        value = obj.get(key)
        return [] if value is None else self.array(value, _json_path(path, key))

    def optional_object(self, obj: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
        value = obj.get(key)
        return {} if value is None else self.object(value, _json_path(path, key))

    def note_ignored(self, array: str, record: Mapping[str, Any], known: Iterable[str]) -> None:
        extra = set(record) - set(known)
        if extra:
            self.ignored_fields.setdefault(array, set()).update(extra)

    def text(
        self,
        obj: Mapping[str, Any],
        key: str,
        path: str,
        *,
        column: Optional[tuple[str, str]] = None,
    ) -> str:
        value = obj.get(key)
        where = _json_path(path, key)
        if key not in obj:
            self.fail(where, "required field is missing")
        if not isinstance(value, str):
            self.fail(where, f"expected a string, found {_type_name(value)}")
        if not value.strip():
            self.fail(where, "must not be empty")
        return self._check_length(value, where, column)

    def optional_text(
        self,
        obj: Mapping[str, Any],
        key: str,
        path: str,
        *,
        column: Optional[tuple[str, str]] = None,
    ) -> Optional[str]:
        value = obj.get(key)
        if value is None:
            return None
        where = _json_path(path, key)
        if not isinstance(value, str):
            self.fail(where, f"expected a string or null, found {_type_name(value)}")
        return self._check_length(value, where, column)

    def _check_length(self, value: str, where: str, column: Optional[tuple[str, str]]) -> str:
        # SQLite ignores VARCHAR lengths; PostgreSQL and MariaDB would fail mid-load instead.
        limit = _column_length(*column) if column else None
        if limit is not None and len(value) > limit:
            self.fail(where, f"longer than {limit} characters ({len(value)})")
        return value

    def integer(
        self, obj: Mapping[str, Any], key: str, path: str, *, minimum: Optional[int] = None
    ) -> int:
        where = _json_path(path, key)
        if key not in obj:
            self.fail(where, "required field is missing")
        return self._integer_value(obj[key], where, minimum)

    def optional_integer(
        self, obj: Mapping[str, Any], key: str, path: str, *, minimum: Optional[int] = None
    ) -> Optional[int]:
        value = obj.get(key)
        if value is None:
            return None
        return self._integer_value(value, _json_path(path, key), minimum)

    def _integer_value(self, value: Any, where: str, minimum: Optional[int]) -> int:
        # bool is an int in Python, never in JSON; 2.0 is accepted as the integer 2.
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(where, f"expected an integer, found {_type_name(value)} ({value!r})")
        if minimum is not None and value < minimum:
            self.fail(where, f"must be at least {minimum}, found {value}")
        return value

    def number(
        self,
        obj: Mapping[str, Any],
        key: str,
        path: str,
        *,
        positive: bool = False,
        maximum: Optional[float] = None,
    ) -> float:
        where = _json_path(path, key)
        if key not in obj:
            self.fail(where, "required field is missing")
        return self._number_value(obj[key], where, positive=positive, maximum=maximum)

    def optional_number(
        self,
        obj: Mapping[str, Any],
        key: str,
        path: str,
        *,
        positive: bool = False,
        non_negative: bool = False,
        maximum: Optional[float] = None,
    ) -> Optional[float]:
        value = obj.get(key)
        if value is None:
            return None
        return self._number_value(
            value,
            _json_path(path, key),
            positive=positive,
            non_negative=non_negative,
            maximum=maximum,
        )

    def _number_value(
        self,
        value: Any,
        where: str,
        *,
        positive: bool = False,
        non_negative: bool = False,
        maximum: Optional[float] = None,
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(where, f"expected a number, found {_type_name(value)} ({value!r})")
        number = float(value)
        if not math.isfinite(number):
            self.fail(where, f"expected a finite number, found {value!r}")
        if positive and number <= 0:
            self.fail(where, f"must be greater than 0, found {value!r}")
        if non_negative and number < 0:
            self.fail(where, f"must not be negative, found {value!r}")
        if maximum is not None and number > maximum:
            self.fail(where, f"must be at most {maximum:g}, found {value!r}")
        return number

    def boolean(self, obj: Mapping[str, Any], key: str, path: str, *, default: bool) -> bool:
        value = obj.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(_json_path(path, key), f"expected true or false, found {_type_name(value)}")
        return value

    def timestamp(self, obj: Mapping[str, Any], key: str, path: str) -> datetime:
        where = _json_path(path, key)
        value = obj.get(key)
        if key not in obj:
            self.fail(where, "required field is missing")
        if not isinstance(value, str):
            self.fail(where, f"expected an ISO 8601 timestamp string, found {_type_name(value)}")
        parsed = _parse_timestamp(value)
        if parsed is None:
            self.fail(where, f"not an ISO 8601 timestamp: {value!r}")
        return parsed

    def optional_timestamp(self, obj: Mapping[str, Any], key: str, path: str) -> Optional[datetime]:
        return None if obj.get(key) is None else self.timestamp(obj, key, path)

    # -- the document ------------------------------------------------------------------------

    def parse(self, document: Any) -> SampleData:
        root = self.object(document, "$")
        header = self.parse_header(root)
        arrays: dict[str, list[Any]] = {}
        ignored_arrays: dict[str, int] = {}
        for key, value in root.items():
            if key in _HEADER_KEYS or key == EXTENSION_KEY:
                continue
            if key in _ENTITY_ARRAYS:
                arrays[key] = [] if value is None else self.array(value, _json_path("$", key))
            else:
                # Arrays of tables we do not load (products, purchases, events, ...): the
                # application's exports have many of them; accepted and reported.
                ignored_arrays[key] = (
                    len(value) if isinstance(value, list) else int(value is not None)
                )
        extension = self.optional_object(root, EXTENSION_KEY, "$")
        ext_path = _json_path("$", EXTENSION_KEY)
        self.check_extension_keys(extension, ext_path)

        deleted_recipes = self.parse_deleted_recipes(extension, ext_path)
        ingredients = self.parse_ingredients(arrays.get("ingredients", []))
        recipes = self.parse_recipes(arrays.get("recipes", []), deleted_recipes)
        all_recipes = {**deleted_recipes, **recipes}
        self.check_variants(recipes)
        ingredient_entries = self.add_minimal_ingredients(ingredients, recipes.values())
        deleted_ingredients = self.parse_deleted_ingredients(
            extension, ext_path, ingredient_entries
        )
        finished_units = self.parse_finished_units(arrays.get("finished_units", []), all_recipes)
        runs, refs, units = self.parse_runs(
            arrays.get("production_runs", []), all_recipes, finished_units
        )
        snapshots = self.parse_snapshots(extension, ext_path, runs, refs, set(deleted_recipes))
        return SampleData(
            source=self.source,
            header=header,
            ingredients=tuple(ingredient_entries.values()),
            recipes=tuple(all_recipes.values()),
            finished_units=tuple(units.values()),
            production_runs=tuple(runs),
            recipe_snapshots=tuple(snapshots),
            deleted_ingredients=tuple(deleted_ingredients),
            ignored_arrays=ignored_arrays,
            ignored_fields={k: tuple(sorted(v)) for k, v in sorted(self.ignored_fields.items())},
            notes=tuple(self.notes),
        )

    def parse_header(self, root: Mapping[str, Any]) -> SampleHeader:
        version = self.text(root, "version", "$")
        if not _VERSION.fullmatch(version):
            self.fail(
                "$.version",
                f"unsupported version {version!r}: this loader reads the application's "
                '3.x export format (e.g. "3.6")',
            )
        exported_text = self.text(root, "exported_at", "$")
        exported_at = _parse_timestamp(exported_text)
        if exported_at is None or not exported_text.strip().endswith("Z"):
            self.fail(
                "$.exported_at",
                f"expected an ISO 8601 UTC timestamp ending in Z "
                f"(e.g. 2025-01-06T18:30:00Z), found {exported_text!r}",
            )
        application = self.text(root, "application", "$")
        if application != APPLICATION:
            self.fail(
                "$.application",
                f"expected {APPLICATION!r}, found {application!r}: not a bake-tracker export",
            )
        return SampleHeader(version, exported_at, application)

    def check_extension_keys(self, extension: Mapping[str, Any], path: str) -> None:
        # Our own format: a misspelt key would silently drop a case, so it is an error.
        known = ("format", "comment", "deleted_recipes", "deleted_ingredients", "recipe_snapshots")
        for key in extension:
            if key not in known:
                self.fail(
                    _json_path(path, key),
                    f"unknown extension key (expected one of: {', '.join(known)})",
                )
        if "format" in extension:
            fmt = extension["format"]
            if isinstance(fmt, bool) or fmt != EXTENSION_FORMAT:
                self.fail(
                    _json_path(path, "format"),
                    f"unsupported extension format {fmt!r} (this loader reads format "
                    f"{EXTENSION_FORMAT})",
                )

    def parse_deleted_recipes(
        self, extension: Mapping[str, Any], ext_path: str
    ) -> dict[str, RecipeEntry]:
        path = _json_path(ext_path, "deleted_recipes")
        entries: dict[str, RecipeEntry] = {}
        for i, item in enumerate(self.optional_array(extension, "deleted_recipes", ext_path)):
            where = _json_path(path, i)
            record = self.object(item, where)
            self.check_record_keys(record, where, ("slug", "name", "category"))
            slug = self.text(record, "slug", where)
            if slug in entries:
                self.fail(_json_path(where, "slug"), f"recipe slug {slug!r} is listed twice")
            columns = {
                "name": self.text(record, "name", where, column=("recipes", "name")),
                "category": self.optional_text(
                    record, "category", where, column=("recipes", "category")
                )
                or DEFAULT_CATEGORY,
                "yield_quantity": DEFAULT_YIELD_QUANTITY,
                "yield_unit": DEFAULT_YIELD_UNIT,
                "is_archived": False,
                "is_production_ready": False,
            }
            entries[slug] = RecipeEntry(slug, columns, (), None, where, deleted=True)
        return entries

    def check_record_keys(self, record: Mapping[str, Any], path: str, known: Sequence[str]) -> None:
        for key in record:
            if key not in known:
                self.fail(_json_path(path, key), f"unknown key (expected: {', '.join(known)})")

    def parse_ingredients(self, items: Sequence[Any]) -> dict[str, IngredientEntry]:
        known = (
            "display_name",
            "slug",
            "category",
            "description",
            "notes",
            "is_packaging",
            "hierarchy_level",
            "foodon_id",
            "density_volume_value",
            "density_volume_unit",
            "density_weight_value",
            "density_weight_unit",
        )
        entries: dict[str, IngredientEntry] = {}
        names: dict[str, str] = {}
        for i, item in enumerate(items):
            where = _json_path("$.ingredients", i)
            record = self.object(item, where)
            self.note_ignored("ingredients", record, known)
            slug = self.text(record, "slug", where, column=("ingredients", "slug"))
            if slug in entries:
                self.fail(
                    _json_path(where, "slug"),
                    f"ingredient slug {slug!r} is already used by {entries[slug].json_path}",
                )
            display_name = self.text(
                record, "display_name", where, column=("ingredients", "display_name")
            )
            if display_name in names:
                self.fail(
                    _json_path(where, "display_name"),
                    f"display_name {display_name!r} is already used by {names[display_name]} "
                    "(the column is UNIQUE)",
                )
            names[display_name] = where
            hierarchy = self.optional_integer(record, "hierarchy_level", where, minimum=0)
            if hierarchy is not None and hierarchy > 2:
                self.fail(_json_path(where, "hierarchy_level"), "must be 0, 1 or 2")
            columns = {
                "display_name": display_name,
                "category": self.text(
                    record, "category", where, column=("ingredients", "category")
                ),
                "is_packaging": self.boolean(record, "is_packaging", where, default=False),
                "hierarchy_level": DEFAULT_HIERARCHY_LEVEL if hierarchy is None else hierarchy,
                "description": self.optional_text(record, "description", where),
                "notes": self.optional_text(record, "notes", where),
                "foodon_id": self.optional_text(
                    record, "foodon_id", where, column=("ingredients", "foodon_id")
                ),
                "density_volume_value": self.optional_number(
                    record, "density_volume_value", where, positive=True
                ),
                "density_volume_unit": self.optional_text(
                    record,
                    "density_volume_unit",
                    where,
                    column=("ingredients", "density_volume_unit"),
                ),
                "density_weight_value": self.optional_number(
                    record, "density_weight_value", where, positive=True
                ),
                "density_weight_unit": self.optional_text(
                    record,
                    "density_weight_unit",
                    where,
                    column=("ingredients", "density_weight_unit"),
                ),
            }
            entries[slug] = IngredientEntry(slug, columns, where)
        return entries

    def parse_recipes(
        self, items: Sequence[Any], deleted: Mapping[str, RecipeEntry]
    ) -> dict[str, RecipeEntry]:
        known = (
            "name",
            "slug",
            "category",
            "source",
            "notes",
            "yield_quantity",
            "yield_unit",
            "yield_description",
            "estimated_time_minutes",
            "prep_time_minutes",
            "cook_time_minutes",
            "is_archived",
            "is_production_ready",
            "base_recipe_slug",
            "variant_name",
            "ingredients",
        )
        entries: dict[str, RecipeEntry] = {}
        no_yield: list[str] = []
        for i, item in enumerate(items):
            where = _json_path("$.recipes", i)
            record = self.object(item, where)
            self.note_ignored("recipes", record, known)
            name = self.text(record, "name", where, column=("recipes", "name"))
            explicit_slug = self.optional_text(record, "slug", where)
            slug = explicit_slug if explicit_slug and explicit_slug.strip() else _slugify(name)
            slug_path = _json_path(where, "slug" if explicit_slug else "name")
            if not slug:
                self.fail(slug_path, "cannot derive a slug from this name; give the recipe a slug")
            if slug in entries:
                self.fail(
                    slug_path, f"recipe slug {slug!r} is already used by {entries[slug].json_path}"
                )
            if slug in deleted:
                self.fail(
                    slug_path,
                    f"recipe slug {slug!r} is also listed in "
                    f"$.{EXTENSION_KEY}.deleted_recipes; a recipe is either present or deleted",
                )
            category = self.text(record, "category", where, column=("recipes", "category"))
            yield_quantity = self.optional_number(record, "yield_quantity", where, positive=True)
            yield_unit = self.optional_text(
                record, "yield_unit", where, column=("recipes", "yield_unit")
            )
            if yield_quantity is None or not yield_unit:
                no_yield.append(where)
            estimated = self.optional_integer(record, "estimated_time_minutes", where, minimum=0)
            if estimated is None:
                # The application's spec splits the time; the table keeps only the total.
                prep = self.optional_integer(record, "prep_time_minutes", where, minimum=0)
                cook = self.optional_integer(record, "cook_time_minutes", where, minimum=0)
                if prep is not None or cook is not None:
                    estimated = (prep or 0) + (cook or 0)
            base = self.optional_text(record, "base_recipe_slug", where)
            columns = {
                "name": name,
                "category": category,
                "source": self.optional_text(record, "source", where, column=("recipes", "source")),
                "yield_quantity": DEFAULT_YIELD_QUANTITY
                if yield_quantity is None
                else yield_quantity,
                "yield_unit": yield_unit or DEFAULT_YIELD_UNIT,
                "yield_description": self.optional_text(
                    record, "yield_description", where, column=("recipes", "yield_description")
                ),
                "estimated_time_minutes": estimated,
                "notes": self.optional_text(record, "notes", where),
                "is_archived": self.boolean(record, "is_archived", where, default=False),
                "variant_name": self.optional_text(
                    record, "variant_name", where, column=("recipes", "variant_name")
                ),
                "is_production_ready": self.boolean(
                    record, "is_production_ready", where, default=False
                ),
            }
            lines = self.parse_lines(record, where)
            entries[slug] = RecipeEntry(slug, columns, lines, base or None, where)
        if no_yield:
            self.notes.append(
                f"{len(no_yield)} recipe(s) without a yield got yield_quantity "
                f"{DEFAULT_YIELD_QUANTITY:g}, yield_unit {DEFAULT_YIELD_UNIT!r}: "
                + ", ".join(no_yield)
            )
        return entries

    def parse_lines(self, record: Mapping[str, Any], where: str) -> tuple[RecipeLine, ...]:
        path = _json_path(where, "ingredients")
        if "ingredients" not in record:
            self.fail(path, "required field is missing (use [] for a recipe without ingredients)")
        lines = []
        for j, item in enumerate(self.array(record["ingredients"], path)):
            line_path = _json_path(path, j)
            line = self.object(item, line_path)
            self.note_ignored(
                "recipes[].ingredients", line, ("ingredient_slug", "quantity", "unit", "notes")
            )
            lines.append(
                RecipeLine(
                    ingredient_slug=self.text(
                        line, "ingredient_slug", line_path, column=("ingredients", "slug")
                    ),
                    quantity=self.number(line, "quantity", line_path, positive=True),
                    unit=self.text(line, "unit", line_path, column=("recipe_ingredients", "unit")),
                    notes=self.optional_text(
                        line, "notes", line_path, column=("recipe_ingredients", "notes")
                    ),
                    json_path=line_path,
                )
            )
        return tuple(lines)

    def check_variants(self, recipes: Mapping[str, RecipeEntry]) -> None:
        for recipe in recipes.values():
            if recipe.base_recipe_slug is None:
                continue
            where = _json_path(recipe.json_path, "base_recipe_slug")
            if recipe.base_recipe_slug == recipe.slug:
                self.fail(where, "a recipe cannot be a variant of itself")
            if recipe.base_recipe_slug not in recipes:
                self.fail(
                    where,
                    f"unknown base recipe {recipe.base_recipe_slug!r}: not a slug in $.recipes",
                )

    def add_minimal_ingredients(
        self, ingredients: dict[str, IngredientEntry], recipes: Iterable[RecipeEntry]
    ) -> dict[str, IngredientEntry]:
        entries = dict(ingredients)
        names = {str(entry.columns["display_name"]) for entry in entries.values()}
        added: list[str] = []
        for recipe in recipes:
            for line in recipe.lines:
                slug = line.ingredient_slug
                if slug in entries:
                    continue
                # The application's catalog already holds these; we only have the slug.
                name = slug.replace("_", " ").strip().capitalize() or slug
                if name in names:
                    name = slug
                names.add(name)
                columns = {
                    "display_name": name,
                    "category": DEFAULT_CATEGORY,
                    "is_packaging": False,
                    "hierarchy_level": DEFAULT_HIERARCHY_LEVEL,
                }
                entries[slug] = IngredientEntry(
                    slug, columns, _json_path(line.json_path, "ingredient_slug"), minimal=True
                )
                added.append(slug)
        if added:
            self.notes.append(
                f"{len(added)} ingredient slug(s) used by recipes but not defined in "
                f"$.ingredients got a minimal row (category {DEFAULT_CATEGORY!r}): "
                + ", ".join(added)
            )
        return entries

    def parse_deleted_ingredients(
        self, extension: Mapping[str, Any], ext_path: str, ingredients: Mapping[str, Any]
    ) -> list[str]:
        path = _json_path(ext_path, "deleted_ingredients")
        slugs: list[str] = []
        for i, item in enumerate(self.optional_array(extension, "deleted_ingredients", ext_path)):
            where = _json_path(path, i)
            if not isinstance(item, str) or not item.strip():
                self.fail(where, f"expected an ingredient slug, found {_type_name(item)}")
            if item not in ingredients:
                self.fail(
                    where,
                    f"unknown ingredient {item!r}: not in $.ingredients and not used by a "
                    "recipe line",
                )
            if item in slugs:
                self.fail(where, f"ingredient {item!r} is listed twice")
            slugs.append(item)
        return slugs

    def parse_finished_units(
        self, items: Sequence[Any], recipes: Mapping[str, RecipeEntry]
    ) -> dict[str, FinishedUnitEntry]:
        known = (
            "slug",
            "recipe_slug",
            "display_name",
            "description",
            "yield_mode",
            "items_per_batch",
            "item_unit",
            "batch_percentage",
            "portion_description",
            "unit_cost",
            "inventory_count",
            "category",
            "production_notes",
            "notes",
        )
        entries: dict[str, FinishedUnitEntry] = {}
        for i, item in enumerate(items):
            where = _json_path("$.finished_units", i)
            record = self.object(item, where)
            self.note_ignored("finished_units", record, known)
            slug = self.text(record, "slug", where, column=("finished_units", "slug"))
            if slug in entries:
                self.fail(
                    _json_path(where, "slug"),
                    f"finished unit slug {slug!r} is already used by {entries[slug].json_path}",
                )
            recipe_slug = self.recipe_reference(record, "recipe_slug", where, recipes)
            mode_text = self.text(record, "yield_mode", where)
            try:
                mode = YieldMode(mode_text.lower())
            except ValueError:
                self.fail(
                    _json_path(where, "yield_mode"),
                    f"expected 'discrete_count' or 'batch_portion', found {mode_text!r}",
                )
            percentage = self.optional_number(
                record, "batch_percentage", where, positive=True, maximum=100
            )
            unit_cost = self.optional_number(record, "unit_cost", where, non_negative=True)
            columns = {
                "display_name": self.text(
                    record, "display_name", where, column=("finished_units", "display_name")
                ),
                "description": self.optional_text(record, "description", where),
                "yield_mode": mode,
                "items_per_batch": self.optional_integer(
                    record, "items_per_batch", where, minimum=1
                ),
                "item_unit": self.optional_text(
                    record, "item_unit", where, column=("finished_units", "item_unit")
                ),
                "batch_percentage": None if percentage is None else _money(percentage),
                "portion_description": self.optional_text(
                    record,
                    "portion_description",
                    where,
                    column=("finished_units", "portion_description"),
                ),
                "unit_cost": _money(unit_cost or 0.0),
                "inventory_count": self.optional_integer(
                    record, "inventory_count", where, minimum=0
                )
                or 0,
                "category": self.optional_text(
                    record, "category", where, column=("finished_units", "category")
                ),
                "production_notes": self.optional_text(record, "production_notes", where),
                "notes": self.optional_text(record, "notes", where),
            }
            entries[slug] = FinishedUnitEntry(slug, recipe_slug, columns, where)
        return entries

    def recipe_reference(
        self,
        record: Mapping[str, Any],
        key: str,
        where: str,
        recipes: Mapping[str, RecipeEntry],
    ) -> str:
        slug = self.text(record, key, where)
        if slug not in recipes:
            self.fail(
                _json_path(where, key),
                f"unknown recipe {slug!r}: not in $.recipes and not in "
                f"$.{EXTENSION_KEY}.deleted_recipes",
            )
        return slug

    def recipe_by_name(
        self, record: Mapping[str, Any], where: str, recipes: Mapping[str, RecipeEntry]
    ) -> str:
        path = _json_path(where, "recipe_name")
        if record.get("recipe_name") is None:
            # What the application's exporter writes for a run whose recipe is gone.
            self.fail(
                path,
                "recipe_name is null: name the recipe (a deleted one goes in "
                f"$.{EXTENSION_KEY}.deleted_recipes) or use recipe_slug",
            )
        name = self.text(record, "recipe_name", where)
        matches = [slug for slug, recipe in recipes.items() if recipe.columns["name"] == name]
        if not matches:
            self.fail(
                path,
                f"unknown recipe {name!r}: no recipe in $.recipes or "
                f"$.{EXTENSION_KEY}.deleted_recipes has this name",
            )
        if len(matches) > 1:
            self.fail(
                path,
                f"recipe name {name!r} is ambiguous ({', '.join(matches)}); use recipe_slug",
            )
        return matches[0]

    def parse_runs(
        self,
        items: Sequence[Any],
        recipes: Mapping[str, RecipeEntry],
        finished_units: dict[str, FinishedUnitEntry],
    ) -> tuple[list[RunEntry], dict[str, int], dict[str, FinishedUnitEntry]]:
        known = (
            "ref",
            "recipe_slug",
            "recipe_name",
            "finished_unit_slug",
            "batches_produced",
            "num_batches",
            "units_produced",
            "actual_yield",
            "expected_yield",
            "produced_at",
            "notes",
            "production_status",
            "loss_quantity",
            "actual_cost",
            "total_ingredient_cost",
            "per_unit_cost",
        )
        units = dict(finished_units)
        first_unit: dict[str, str] = {}
        for unit in finished_units.values():
            first_unit.setdefault(unit.recipe_slug, unit.slug)
        runs: list[RunEntry] = []
        refs: dict[str, int] = {}
        events = 0
        for i, item in enumerate(items):
            where = _json_path("$.production_runs", i)
            record = self.object(item, where)
            self.note_ignored("production_runs", record, known)
            if record.get("event_slug") is not None or record.get("event_name") is not None:
                events += 1
            ref = self.optional_text(record, "ref", where)
            if ref is not None:
                if not ref.strip():
                    self.fail(_json_path(where, "ref"), "must not be empty")
                if ref in refs:
                    self.fail(
                        _json_path(where, "ref"),
                        f"ref {ref!r} is already used by $.production_runs[{refs[ref]}]",
                    )
                refs[ref] = i
            recipe_slug = self.run_recipe(record, where, recipes)
            unit_slug = self.run_finished_unit(
                record, where, recipe_slug, units, first_unit, recipes
            )
            unit = units[unit_slug]
            num_batches = self.either_integer(record, where, "batches_produced", "num_batches", 1)
            actual = self.either_integer(record, where, "units_produced", "actual_yield", 0)
            expected = self.optional_integer(record, "expected_yield", where, minimum=0)
            if expected is None:
                expected = self.expected_yield(unit, num_batches, actual)
            cost = self.either_number(record, where, "actual_cost", "total_ingredient_cost")
            per_unit = self.optional_number(record, "per_unit_cost", where, non_negative=True)
            total_cost = _money(cost or 0.0)
            if per_unit is None:
                per_unit_cost = (
                    (total_cost / actual).quantize(_COST_QUANTUM, rounding=ROUND_HALF_UP)
                    if actual
                    else Decimal("0.0000")
                )
            else:
                per_unit_cost = _money(per_unit)
            columns = {
                "num_batches": num_batches,
                "expected_yield": expected,
                "actual_yield": actual,
                "produced_at": self.timestamp(record, "produced_at", where),
                "notes": self.optional_text(record, "notes", where),
                "production_status": self.optional_text(
                    record, "production_status", where, column=(_RUNS, "production_status")
                )
                or DEFAULT_PRODUCTION_STATUS,
                "loss_quantity": self.optional_integer(record, "loss_quantity", where, minimum=0)
                or 0,
                "total_ingredient_cost": total_cost,
                "per_unit_cost": per_unit_cost,
            }
            runs.append(RunEntry(i, ref, recipe_slug, unit_slug, columns, where))
        if events:
            self.notes.append(
                f"{events} run(s) name an event; events are outside the loaded tables, so "
                "their event_id is NULL"
            )
        made = [unit.slug for unit in units.values() if unit.defaulted]
        if made:
            self.notes.append(
                f"{len(made)} recipe(s) with runs but no finished unit got a default one "
                "(discrete_count, items_per_batch = the recipe's yield): " + ", ".join(made)
            )
        return runs, refs, units

    def run_recipe(
        self, record: Mapping[str, Any], where: str, recipes: Mapping[str, RecipeEntry]
    ) -> str:
        has_slug = record.get("recipe_slug") is not None
        # The exporter writes "recipe_name": null for a run whose recipe is gone; with a slug
        # beside it the null says nothing, without one it is an error (recipe_by_name).
        has_name = record.get("recipe_name") is not None or (
            not has_slug and "recipe_name" in record
        )
        if not has_slug and not has_name:
            self.fail(
                _json_path(where, "recipe_slug"),
                "required field is missing (give recipe_slug or recipe_name)",
            )
        slug = self.recipe_reference(record, "recipe_slug", where, recipes) if has_slug else None
        by_name = self.recipe_by_name(record, where, recipes) if has_name else None
        if slug is not None and by_name is not None and slug != by_name:
            self.fail(
                _json_path(where, "recipe_name"),
                f"names recipe {by_name!r} but recipe_slug names {slug!r}",
            )
        result = slug or by_name
        assert result is not None
        return result

    def run_finished_unit(
        self,
        record: Mapping[str, Any],
        where: str,
        recipe_slug: str,
        units: dict[str, FinishedUnitEntry],
        first_unit: dict[str, str],
        recipes: Mapping[str, RecipeEntry],
    ) -> str:
        slug = self.optional_text(record, "finished_unit_slug", where)
        if slug is not None:
            path = _json_path(where, "finished_unit_slug")
            if slug not in units or units[slug].defaulted:
                self.fail(path, f"unknown finished unit {slug!r}: not in $.finished_units")
            if units[slug].recipe_slug != recipe_slug:
                self.fail(
                    path,
                    f"finished unit {slug!r} belongs to recipe {units[slug].recipe_slug!r}, "
                    f"not to the run's recipe {recipe_slug!r}",
                )
            return slug
        if recipe_slug in first_unit:
            return first_unit[recipe_slug]
        unit = self.default_finished_unit(recipes[recipe_slug], units)
        units[unit.slug] = unit
        first_unit[recipe_slug] = unit.slug
        return unit.slug

    def default_finished_unit(
        self, recipe: RecipeEntry, units: Mapping[str, FinishedUnitEntry]
    ) -> FinishedUnitEntry:
        limit = _column_length("finished_units", "slug") or 100
        base = f"{recipe.slug}_batch"[:limit]
        slug, n = base, 2
        while slug in units:
            suffix = f"_{n}"
            slug, n = base[: limit - len(suffix)] + suffix, n + 1
        yield_quantity = float(recipe.columns["yield_quantity"])
        whole = yield_quantity >= 1 and yield_quantity.is_integer()
        columns = {
            "display_name": recipe.columns["name"],
            "description": None,
            "yield_mode": YieldMode.DISCRETE_COUNT,
            "items_per_batch": int(yield_quantity) if whole else None,
            "item_unit": str(recipe.columns["yield_unit"])[
                : _column_length("finished_units", "item_unit") or 50
            ],
            "batch_percentage": None,
            "portion_description": None,
            "unit_cost": Decimal("0.0000"),
            "inventory_count": 0,
            "category": recipe.columns["category"],
            "production_notes": None,
            "notes": None,
        }
        return FinishedUnitEntry(slug, recipe.slug, columns, recipe.json_path, defaulted=True)

    @staticmethod
    def expected_yield(unit: FinishedUnitEntry, num_batches: int, actual: int) -> int:
        items = unit.columns.get("items_per_batch")
        percentage = unit.columns.get("batch_percentage")
        if unit.columns["yield_mode"] is YieldMode.DISCRETE_COUNT and items:
            return num_batches * int(items)
        if unit.columns["yield_mode"] is YieldMode.BATCH_PORTION and percentage:
            return num_batches * int(Decimal(100) // Decimal(percentage))
        return actual

    def either_integer(
        self, record: Mapping[str, Any], where: str, spec_key: str, export_key: str, minimum: int
    ) -> int:
        # The spec and the application's exporter spell these differently; accept both.
        values = {
            key: self.integer(record, key, where, minimum=minimum)
            for key in (spec_key, export_key)
            if record.get(key) is not None
        }
        if not values:
            self.fail(
                _json_path(where, spec_key),
                f"required field is missing (give {spec_key} or {export_key})",
            )
        if len(set(values.values())) > 1:
            self.fail(
                _json_path(where, export_key),
                f"{export_key} ({values[export_key]}) contradicts {spec_key} ({values[spec_key]})",
            )
        return next(iter(values.values()))

    def either_number(
        self, record: Mapping[str, Any], where: str, spec_key: str, export_key: str
    ) -> Optional[float]:
        values = {
            key: self.number(record, key, where)
            for key in (spec_key, export_key)
            if record.get(key) is not None
        }
        for key, value in values.items():
            if value < 0:
                self.fail(_json_path(where, key), f"must not be negative, found {value!r}")
        if len(set(values.values())) > 1:
            self.fail(
                _json_path(where, export_key),
                f"{export_key} ({values[export_key]}) contradicts {spec_key} ({values[spec_key]})",
            )
        return next(iter(values.values()), None)

    def parse_snapshots(
        self,
        extension: Mapping[str, Any],
        ext_path: str,
        runs: Sequence[RunEntry],
        refs: Mapping[str, int],
        deleted_recipes: set[str],
    ) -> list[SnapshotEntry]:
        known = ("run", "linked", "scale_factor", "snapshot_date", "is_backfilled", "recipe_data")
        recipe_data_keys = RECIPE_DATA_COLUMNS
        path = _json_path(ext_path, "recipe_snapshots")
        snapshots: list[SnapshotEntry] = []
        seen: dict[int, str] = {}
        for i, item in enumerate(self.optional_array(extension, "recipe_snapshots", ext_path)):
            where = _json_path(path, i)
            record = self.object(item, where)
            self.check_record_keys(record, where, known)
            ref = self.text(record, "run", where)
            if ref not in refs:
                self.fail(
                    _json_path(where, "run"),
                    f"unknown run {ref!r}: no entry of $.production_runs has this ref",
                )
            run = runs[refs[ref]]
            if run.index in seen:
                self.fail(
                    _json_path(where, "run"),
                    f"run {ref!r} already has a snapshot at {seen[run.index]} "
                    "(production_run_id is UNIQUE)",
                )
            if run.recipe_slug in deleted_recipes:
                self.fail(
                    _json_path(where, "run"),
                    f"run {ref!r} belongs to deleted recipe {run.recipe_slug!r}; a snapshot "
                    "keeps its recipe row (ON DELETE RESTRICT), so the application cannot "
                    "have deleted it",
                )
            seen[run.index] = where
            if "linked" not in record:
                self.fail(
                    _json_path(where, "linked"),
                    "required field is missing (true: the run points at the snapshot; false: "
                    "the run's recipe_snapshot_id is still NULL)",
                )
            linked = self.boolean(record, "linked", where, default=True)
            scale = self.optional_number(record, "scale_factor", where, positive=True)
            snapshot_date = self.optional_timestamp(record, "snapshot_date", where)
            overrides = self.optional_object(record, "recipe_data", where)
            for key in overrides:
                if key not in recipe_data_keys:
                    self.fail(
                        _json_path(_json_path(where, "recipe_data"), key),
                        f"not a recipe_data field (expected: {', '.join(recipe_data_keys)})",
                    )
            snapshots.append(
                SnapshotEntry(
                    run_index=run.index,
                    linked=linked,
                    scale_factor=1.0 if scale is None else scale,
                    snapshot_date=snapshot_date or run.columns["produced_at"],
                    is_backfilled=self.boolean(record, "is_backfilled", where, default=False),
                    recipe_data=dict(overrides),
                    json_path=where,
                )
            )
        return snapshots


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What ``load_sample`` wrote.

    ``inserted`` counts the rows each table holds after the load; ``removed`` the rows that
    were written and then deleted with foreign keys off to reproduce production's deleted
    recipes and ingredients. ``run_ids`` maps each run ``ref`` to its database id.
    """

    source: str
    database: str
    schema: str
    inserted: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    ignored_arrays: dict[str, int] = field(default_factory=dict)
    ignored_fields: dict[str, list[str]] = field(default_factory=dict)
    minimal_ingredients: list[str] = field(default_factory=list)
    default_finished_units: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    run_ids: dict[str, int] = field(default_factory=dict)
    orphaned_run_ids: list[int] = field(default_factory=list)
    expected: Optional[ExpectedCounts] = None

    @property
    def orphaned_runs(self) -> int:
        """Return the number of runs whose recipe row no longer exists."""
        return len(self.orphaned_run_ids)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON-ready values."""
        return {
            "source": self.source,
            "database": self.database,
            "schema": self.schema,
            "inserted": dict(self.inserted),
            "removed": dict(self.removed),
            "ignored_arrays": dict(self.ignored_arrays),
            "ignored_fields": {k: list(v) for k, v in self.ignored_fields.items()},
            "minimal_ingredients": list(self.minimal_ingredients),
            "default_finished_units": list(self.default_finished_units),
            "notes": list(self.notes),
            "orphaned_runs": self.orphaned_runs,
            "orphaned_run_ids": list(self.orphaned_run_ids),
            "run_ids": dict(self.run_ids),
            "expected": None if self.expected is None else self.expected.to_dict(),
        }


def load_sample(
    engine: Engine,
    sample: Union[SampleData, PathArg] = DEFAULT_SAMPLE_PATH,
    *,
    metadata: sa.MetaData = Base.metadata,
) -> LoadReport:
    """Create the tables of ``metadata`` in an empty database and load ``sample`` into them.

    All or nothing: one transaction; on PostgreSQL and SQLite the DDL is part of it, on
    MariaDB (whose DDL commits implicitly) the created tables are dropped again on failure.
    With ``metadata=pre_snapshot_metadata()`` an old-schema database is built: only the columns
    the tables have are written and the extension's snapshots are skipped.

    Raises:
        BadInputError: the database already has one of the tables (nothing was touched), or
            the sample file is unusable (see ``read_sample``).
        DatabaseUnavailableError: the database cannot be reached.
        SampleLoadError: the database refused the data; nothing was left behind.
    """
    data = sample if isinstance(sample, SampleData) else read_sample(sample)
    missing = [name for name in (*_REQUIRED_TABLES, _RUNS) if name not in metadata.tables]
    if missing:
        raise ValueError(f"metadata lacks the table(s) {', '.join(missing)}")
    backend = engine.dialect.name
    if backend not in ("sqlite", "postgresql", "mysql", "mariadb"):
        raise BadInputError(f"unsupported database backend: {backend}")
    try:
        conn = engine.connect()
    except DBAPIError as exc:
        raise DatabaseUnavailableError(
            f"cannot open {display_url(engine.url)}: {describe_db_error(exc)}"
        ) from None
    with conn:
        loader = _Loader(conn, data, metadata)
        try:
            if backend == "sqlite":
                loader.load_sqlite()
            elif backend == "postgresql":
                loader.load_postgresql()
            else:
                loader.load_mariadb()
        except DBAPIError as exc:
            raise SampleLoadError(
                f"cannot load {data.source} into {display_url(engine.url)}: "
                f"{describe_db_error(exc)}; nothing was loaded"
            ) from exc
        return loader.report


def load_sample_file(
    url: Union[URL, str],
    sample_path: PathArg = DEFAULT_SAMPLE_PATH,
    *,
    metadata: sa.MetaData = Base.metadata,
) -> LoadReport:
    """Load a sample file into the database at ``url``, creating a SQLite file if needed.

    The file is validated before the database is touched. A SQLite file this call created is
    deleted again if the load fails, so a failed load leaves no partial database behind.
    ``url`` may be text, as ``--database-url`` takes it (a bare path is a SQLite file).
    """
    if isinstance(url, str):
        url = resolve_url(url)
    sample = read_sample(sample_path)
    created: list[Path] = []
    path = sqlite_path(url) if is_sqlite(url) else None
    # Only a database file this call creates is ours to delete, with the side files SQLite
    # made for it; an existing database's journal may belong to another writer.
    if path is not None and not path.exists():
        created = [path, *(path.with_name(path.name + suffix) for suffix in _SQLITE_SIDE_FILES)]
    elif path is not None:
        _require_sqlite_file(path, url)
    engine = open_engine(url, create=True)
    try:
        return load_sample(engine, sample, metadata=metadata)
    except BaseException:
        # Close every connection first: Windows cannot delete an open file.
        engine.dispose()
        for leftover in created:
            with suppress(FileNotFoundError):
                leftover.unlink()
        raise
    finally:
        engine.dispose()


_SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")


def _require_sqlite_file(path: Path, url: URL) -> None:
    """Refuse, read-only and before anything is written, a file that is not a SQLite database."""
    try:
        probe = sqlite3.connect(f"{sqlite_uri(path)}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BadInputError(f"cannot load sample data into {display_url(url)}: {exc}") from None
    try:
        probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise BadInputError(
            f"cannot load sample data into {display_url(url)}: {describe_db_error(exc)}; "
            "nothing was changed"
        ) from None
    finally:
        probe.close()


class _Loader:
    """Write one ``SampleData`` through one connection; one method per backend's transaction."""

    def __init__(self, conn: Connection, data: SampleData, metadata: sa.MetaData) -> None:
        self.conn = conn
        self.data = data
        self.metadata = metadata
        self.tables = metadata.tables
        runs = self.tables[_RUNS]
        self.with_snapshots = _SNAPSHOTS in self.tables and "recipe_snapshot_id" in runs.c
        self.now = utc_now()
        self.ingredient_id: dict[str, int] = {}
        self.recipe_id: dict[str, int] = {}
        self.run_id: dict[int, int] = {}
        self.report = LoadReport(
            source=data.source,
            database=display_url(conn.engine.url),
            schema="current" if self.with_snapshots else "pre-snapshot",
            ignored_arrays=dict(data.ignored_arrays),
            ignored_fields={k: list(v) for k, v in data.ignored_fields.items()},
            minimal_ingredients=list(data.minimal_ingredients),
            default_finished_units=list(data.default_finished_units),
            notes=list(data.notes),
            expected=data.expected_counts(with_snapshots=self.with_snapshots),
        )

    # -- the transaction, per backend --------------------------------------------------------

    def load_sqlite(self) -> None:
        raw = self.conn.connection.dbapi_connection
        if not isinstance(raw, sqlite3.Connection):
            raise BadInputError(
                f"unsupported SQLite driver for {self.report.database}: use sqlite:// (pysqlite)"
            )
        # SQLite cannot switch foreign keys inside a transaction, so they are off for the whole
        # of it; foreign_key_check below makes up for the checks skipped meanwhile.
        with _foreign_keys_off(self.conn), write_transaction(self.conn):
            self.refuse_if_loaded()
            self.metadata.create_all(self.conn, checkfirst=False)
            self.insert_all()
            self.delete_rows()
            self.check_sqlite_foreign_keys()
            self.count_rows()

    def load_postgresql(self) -> None:
        with self.conn.begin():
            self.refuse_if_loaded()
            self.metadata.create_all(self.conn, checkfirst=False)
            self.insert_all()
            if self.has_deletions():
                # Foreign keys are triggers in PostgreSQL; "replica" skips them (needs a
                # superuser, as production's cleanup did).
                try:
                    with foreign_keys_off(self.conn):
                        self.delete_rows()
                except ForeignKeysError as exc:
                    raise SampleLoadError(
                        f"cannot reproduce the sample's deleted recipes and ingredients in "
                        f"{self.report.database}: {exc} (switching off foreign-key triggers "
                        "needs a superuser; load as one); nothing was loaded"
                    ) from exc
            self.count_rows()

    def load_mariadb(self) -> None:
        with self.conn.begin():
            self.refuse_if_loaded()
        created = False
        try:
            # MariaDB commits DDL implicitly: the tables exist from here on, so any failure
            # below drops them again.
            created = True
            self.metadata.create_all(self.conn, checkfirst=False)
            self.conn.commit()
            with self.conn.begin():
                self.insert_all()
                if self.has_deletions():
                    with _foreign_keys_off(self.conn):
                        self.delete_rows()
                self.count_rows()
        except BaseException:
            if created:
                self.drop_created_tables()
            raise

    def drop_created_tables(self) -> None:
        if self.conn.in_transaction():
            self.conn.rollback()
        with _foreign_keys_off(self.conn):
            self.metadata.drop_all(self.conn, checkfirst=True)
        self.conn.commit()

    def refuse_if_loaded(self) -> None:
        # Any table at all: sample data goes into a new or empty database only, never beside
        # another application's tables.
        clash = sorted(sa.inspect(self.conn).get_table_names())
        if clash:
            raise BadInputError(
                f"refusing to load sample data into {self.report.database}: it already has "
                f"the table(s) {', '.join(clash)}; load sample data only into a new or empty "
                "database (nothing was changed)"
            )

    # -- the rows ----------------------------------------------------------------------------

    def common(self, created: datetime) -> dict[str, Any]:
        return {"uuid": new_uuid(), "created_at": created, "updated_at": created}

    def insert(self, table_name: str, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Insert ``rows`` in one executemany and return their ids, in order."""
        if not rows:
            return []
        table = self.tables[table_name]
        # Only the columns the target table has (an old schema lacks the snapshot-era ones).
        keys = [key for key in rows[0] if key in table.c]
        self.conn.execute(table.insert(), [{key: row[key] for key in keys} for row in rows])
        # The uuids are ours and unique: map them back to the ids the database assigned
        # (portable, unlike RETURNING with executemany).
        ids = {uuid: id_ for uuid, id_ in self.conn.execute(sa.select(table.c.uuid, table.c.id))}
        return [ids[row["uuid"]] for row in rows]

    def insert_all(self) -> None:
        data = self.data
        now = self.now
        catalog = {"date_added": now, "last_modified": now}

        # Rows the extension deletes go first, so that their ids are never a table's largest:
        # SQLite would hand the largest id of a table without AUTOINCREMENT to the next insert.
        deleted_ingredients = set(data.deleted_ingredients)
        ingredients = sorted(data.ingredients, key=lambda e: e.slug not in deleted_ingredients)
        ingredient_ids = self.insert(
            "ingredients",
            [
                {**self.common(now), **catalog, **_INGREDIENT_NULLS, **e.columns, "slug": e.slug}
                for e in ingredients
            ],
        )
        self.ingredient_id = dict(zip((e.slug for e in ingredients), ingredient_ids))

        recipes = sorted(data.recipes, key=lambda r: not r.deleted)
        recipe_rows = [
            {**self.common(now), **catalog, **_RECIPE_NULLS, **r.columns, "base_recipe_id": None}
            for r in recipes
        ]
        self.recipe_id = dict(zip((r.slug for r in recipes), self.insert("recipes", recipe_rows)))
        variants = [
            {"b_id": self.recipe_id[r.slug], "b_base": self.recipe_id[r.base_recipe_slug]}
            for r in recipes
            if r.base_recipe_slug is not None
        ]
        table = self.tables["recipes"]
        if variants and "base_recipe_id" in table.c:
            self.conn.execute(
                table.update()
                .where(table.c.id == sa.bindparam("b_id"))
                # updated_at as inserted: the models' onupdate would stamp the load's clock.
                .values(base_recipe_id=sa.bindparam("b_base"), updated_at=table.c.updated_at),
                variants,
            )
        elif variants:
            self.report.notes.append(
                f"{len(variants)} variant recipe(s) loaded as plain recipes: the target "
                "schema has no base_recipe_id"
            )

        self.insert(
            "recipe_ingredients",
            [
                {
                    **self.common(now),
                    "recipe_id": self.recipe_id[r.slug],
                    "ingredient_id": self.ingredient_id[line.ingredient_slug],
                    "quantity": line.quantity,
                    "unit": line.unit,
                    "notes": line.notes,
                }
                for r in data.recipes
                for line in r.lines
            ],
        )

        unit_ids = self.insert(
            "finished_units",
            [
                {
                    **self.common(now),
                    **u.columns,
                    "slug": u.slug,
                    "recipe_id": self.recipe_id[u.recipe_slug],
                }
                for u in data.finished_units
            ],
        )
        unit_id = dict(zip((u.slug for u in data.finished_units), unit_ids))

        run_ids = self.insert(
            _RUNS,
            [
                {
                    **self.common(run.columns["produced_at"]),
                    **run.columns,
                    "recipe_id": self.recipe_id[run.recipe_slug],
                    "finished_unit_id": unit_id[run.finished_unit_slug],
                    "event_id": None,
                    "recipe_snapshot_id": None,
                }
                for run in data.production_runs
            ],
        )
        self.run_id = {run.index: rid for run, rid in zip(data.production_runs, run_ids)}
        self.report.run_ids = {
            run.ref: self.run_id[run.index] for run in data.production_runs if run.ref is not None
        }
        deleted = set(data.deleted_recipes)
        self.report.orphaned_run_ids = [
            self.run_id[run.index] for run in data.production_runs if run.recipe_slug in deleted
        ]
        self.insert_snapshots()

    def insert_snapshots(self) -> None:
        snapshots = self.data.recipe_snapshots
        if not snapshots:
            return
        if not self.with_snapshots:
            linked = sum(1 for s in snapshots if s.linked)
            self.report.notes.append(
                f"{len(snapshots)} snapshot(s) of the extension ({linked} linked) skipped: "
                "the target schema has no recipe_snapshots"
            )
            return
        runs = {run.index: run for run in self.data.production_runs}
        recipes = {recipe.slug: recipe for recipe in self.data.recipes}
        rows = []
        for snapshot in snapshots:
            run = runs[snapshot.run_index]
            recipe = recipes[run.recipe_slug]
            rows.append(
                {
                    **self.common(snapshot.snapshot_date),
                    "recipe_id": self.recipe_id[recipe.slug],
                    "production_run_id": self.run_id[run.index],
                    "scale_factor": snapshot.scale_factor,
                    "snapshot_date": snapshot.snapshot_date,
                    "recipe_data": json.dumps({**_recipe_data(recipe), **snapshot.recipe_data}),
                    "ingredients_data": json.dumps(self.ingredients_data(recipe)),
                    "is_backfilled": snapshot.is_backfilled,
                }
            )
        snapshot_ids = self.insert(_SNAPSHOTS, rows)
        runs_table = self.tables[_RUNS]
        links = [
            {"b_run": self.run_id[s.run_index], "b_snapshot": sid}
            for s, sid in zip(snapshots, snapshot_ids)
            if s.linked
        ]
        if links:
            self.conn.execute(
                runs_table.update()
                .where(runs_table.c.id == sa.bindparam("b_run"))
                .values(
                    recipe_snapshot_id=sa.bindparam("b_snapshot"),
                    updated_at=runs_table.c.updated_at,
                ),
                links,
            )

    def ingredients_data(self, recipe: RecipeEntry) -> list[dict[str, Any]]:
        """Build ingredients_data as the application wrote it when it took the snapshot."""
        by_slug = {e.slug: e for e in self.data.ingredients}
        deleted = set(self.data.deleted_ingredients)
        rows = []
        for line in recipe.lines:
            gone = line.ingredient_slug in deleted
            rows.append(
                {
                    "ingredient_id": self.ingredient_id[line.ingredient_slug],
                    "ingredient_name": "Unknown"
                    if gone
                    else by_slug[line.ingredient_slug].columns["display_name"],
                    "ingredient_slug": "" if gone else line.ingredient_slug,
                    "quantity": float(line.quantity),
                    "unit": line.unit,
                    "notes": line.notes,
                }
            )
        return rows

    def has_deletions(self) -> bool:
        return bool(self.data.deleted_recipes or self.data.deleted_ingredients)

    def delete_rows(self) -> None:
        """Delete the extension's recipes and ingredients, leaving their references dangling."""
        for table_name, ids in (
            ("recipes", [self.recipe_id[slug] for slug in self.data.deleted_recipes]),
            ("ingredients", [self.ingredient_id[slug] for slug in self.data.deleted_ingredients]),
        ):
            if not ids:
                continue
            table = self.tables[table_name]
            self.conn.execute(table.delete().where(table.c.id.in_(ids)))
            self.report.removed[table_name] = len(ids)

    def check_sqlite_foreign_keys(self) -> None:
        # Only the references the extension meant to leave dangling may fail the check.
        allowed = {
            ("production_runs", "recipes"),
            ("finished_units", "recipes"),
            ("recipe_ingredients", "ingredients"),
        }
        violations = self.conn.exec_driver_sql("PRAGMA foreign_key_check").all()
        unexpected = sorted({(row[0], row[2]) for row in violations} - allowed)
        if unexpected:
            pairs = ", ".join(f"{child} -> {parent}" for child, parent in unexpected)
            raise SampleLoadError(
                f"loading {self.data.source} left unexpected dangling references ({pairs}); "
                "nothing was loaded"
            )

    def count_rows(self) -> None:
        for table in self.metadata.sorted_tables:
            count = self.conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            self.report.inserted[table.name] = int(count)


# Nullable columns a file may leave out: written explicitly so that every executemany row has
# the same keys.
_INGREDIENT_NULLS: dict[str, Any] = {
    "description": None,
    "notes": None,
    "foodon_id": None,
    "density_volume_value": None,
    "density_volume_unit": None,
    "density_weight_value": None,
    "density_weight_unit": None,
    "parent_ingredient_id": None,
}
_RECIPE_NULLS: dict[str, Any] = {
    "source": None,
    "yield_description": None,
    "estimated_time_minutes": None,
    "notes": None,
    "variant_name": None,
}


def _recipe_data(recipe: RecipeEntry) -> dict[str, Any]:
    """Build recipe_data from the recipe's row, as the application's snapshot writer does."""
    columns = {**_RECIPE_NULLS, **recipe.columns}
    return {key: columns.get(key) for key in RECIPE_DATA_COLUMNS}


@contextmanager
def _foreign_keys_off(conn: Connection) -> Iterator[None]:
    try:
        with foreign_keys_off(conn):
            yield
    except ForeignKeysError as exc:
        raise SampleLoadError(f"{exc}; nothing was loaded") from None
