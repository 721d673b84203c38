"""``python -m snapshot_backfill``: the same command line as ``snapshot-backfill``."""

import sys

from .cli import main

sys.exit(main())
