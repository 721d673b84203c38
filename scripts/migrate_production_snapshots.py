#!/usr/bin/env python3
"""Backfill RecipeSnapshots for existing ProductionRuns (the work package's documented entry).

Usage:
    python scripts/migrate_production_snapshots.py --database-url URL --dry-run   # plan only
    python scripts/migrate_production_snapshots.py --database-url URL             # asks first
    python scripts/migrate_production_snapshots.py --database-url URL --yes       # no prompt
    python scripts/migrate_production_snapshots.py --database-url URL --verify

A thin wrapper over ``snapshot-backfill plan|run|verify``: same code, same exit codes.
Back up your database before running without --dry-run (SQLite files are backed up
automatically next to the database).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

try:
    from snapshot_backfill.cli import main as cli_main
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from snapshot_backfill.cli import main as cli_main


def translate(argv: Optional[Sequence[str]] = None) -> list[str]:
    """Map the work package's flags onto the ``snapshot-backfill`` command line."""
    parser = argparse.ArgumentParser(
        description="Backfill RecipeSnapshots for existing ProductionRuns"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="Validate without modifying data")
    mode.add_argument("--verify", action="store_true", help="Check the migrated database")
    parser.add_argument("--yes", action="store_true", help="Do not ask for confirmation")
    parser.add_argument("--database-url", help="Database URL or SQLite path")
    parser.add_argument(
        "--backup-taken",
        action="store_true",
        help="PostgreSQL/MariaDB: you took the dump shown (required to write to a server)",
    )
    args = parser.parse_args(argv)
    command = "plan" if args.dry_run else "verify" if args.verify else "run"
    translated = [command]
    if args.database_url:
        translated += ["--database-url", args.database_url]
    if args.yes and command == "run":
        translated.append("--yes")
    if args.backup_taken and command == "run":
        translated.append("--backup-taken")
    return translated


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(translate(argv))


if __name__ == "__main__":
    sys.exit(main())
