"""Backfill recipe snapshots for bake-tracker production runs recorded before snapshots existed."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("snapshot-backfill")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
