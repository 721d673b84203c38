"""The application's own default database, found the way the application finds it.

Used when neither ``--database-url`` nor ``SNAPSHOT_BACKFILL_DATABASE_URL`` names a database
(the work package's documented usage, ``migrate_production_snapshots.py --dry-run``, gives
none). The application reads ``BAKING_TRACKER_ENV`` (default ``production``):

- ``production``: ``~/Documents/BakeTracker/baking_tracker.db`` (the user's home directory,
  on Windows, macOS and Linux alike);
- ``development``: ``data/baking_tracker.db`` of the application checkout the command runs
  from. A checkout is recognised by the application's own database module,
  ``src/utils/db.py`` (what the work package's script imports as ``src.utils.db``), in the
  current directory or one of its parents.

The file is never created: a default that does not exist is refused, naming the path and the
variables that choose another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .database import ENV_VAR
from .errors import BadInputError

APP_ENV_VAR = "BAKING_TRACKER_ENV"
DEFAULT_APP_ENV = "production"
DATABASE_FILE_NAME = "baking_tracker.db"
# The application's database module: what marks a directory as an application checkout.
CHECKOUT_MARKER = Path("src", "utils", "db.py")


@dataclass(frozen=True)
class DefaultDatabase:
    """The database chosen, and why, in words for the user."""

    path: Path
    reason: str


def production_database(home: Optional[Path] = None) -> Path:
    """``~/Documents/BakeTracker/baking_tracker.db``."""
    return (home or Path.home()) / "Documents" / "BakeTracker" / DATABASE_FILE_NAME


def find_checkout(start: Path) -> Optional[Path]:
    """The application checkout ``start`` is in (``start`` or a parent), or None."""
    for directory in (start, *start.parents):
        if (directory / CHECKOUT_MARKER).is_file():
            return directory
    return None


def default_database(
    environ: Mapping[str, str], cwd: Path, home: Optional[Path] = None
) -> DefaultDatabase:
    """Resolve the application's default database; BadInputError if unknown or missing."""
    given = environ.get(APP_ENV_VAR, "").strip()
    app_env = given.lower() or DEFAULT_APP_ENV
    source = f"{APP_ENV_VAR}={given}" if given else f"{APP_ENV_VAR} unset, so {DEFAULT_APP_ENV}"
    if app_env == "production":
        path = production_database(home)
        reason = f"the application's production database ({source})"
    elif app_env == "development":
        checkout = find_checkout(cwd.absolute())
        if checkout is None:
            raise BadInputError(
                f"{source}: the development database is the data/{DATABASE_FILE_NAME} of an "
                f"application checkout, and {cwd} is not in one (no {CHECKOUT_MARKER.as_posix()} "
                "here or above); run from the checkout or pass --database-url"
            )
        path = checkout / "data" / DATABASE_FILE_NAME
        reason = f"the development database of the checkout {checkout} ({source})"
    else:
        raise BadInputError(
            f"{APP_ENV_VAR}={given}: expected production or development (or pass --database-url)"
        )
    if not path.is_file():
        raise BadInputError(
            f"no database given and the application's default {path} does not exist ({source}); "
            f"pass --database-url, set {ENV_VAR}, or set "
            f"{APP_ENV_VAR} (production or development)"
        )
    return DefaultDatabase(path=path, reason=reason)
