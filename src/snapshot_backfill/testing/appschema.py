"""Where the application's own schema files live (beside the repository, never copied in)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_SPEC = Path(__file__).resolve().parents[4] / "shared" / "spec"
APP_SCHEMA = SHARED_SPEC / "bake_tracker_schema.sql"
APP_PRE_SNAPSHOT_SCHEMA = SHARED_SPEC / "bake_tracker_schema_pre_snapshot.sql"


def require(path: Path) -> Path:
    """Return ``path``, or skip the test saying which file of ../shared is missing."""
    if not path.is_file():
        pytest.skip(f"{path} is absent: the application's schema lives in ../shared/spec")
    return path
