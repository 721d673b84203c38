"""Where the application's own schema files are: ``../shared/spec``, never copied in.

The one place that looks for them. ``SNAPSHOT_BACKFILL_SHARED_SPEC`` names the folder; without
it, ``shared/spec`` beside the source checkout this package is imported from (the project's
own tests), else beside the current directory. A test that needs a file calls
``require(APP_SCHEMA)``, which skips it, saying which file is missing, when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SNAPSHOT_BACKFILL_SHARED_SPEC"


def shared_spec() -> Path:
    """The folder of the application's schema files (it may not exist)."""
    explicit = os.environ.get(ENV_VAR, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    # src/snapshot_backfill/testing/appschema.py: parents[4] is the checkout's parent folder.
    candidates = [
        Path(__file__).resolve().parents[4] / "shared" / "spec",
        Path.cwd().resolve().parent / "shared" / "spec",
    ]
    return next((c for c in candidates if c.is_dir()), candidates[0])


SHARED_SPEC = shared_spec()
APP_SCHEMA = SHARED_SPEC / "bake_tracker_schema.sql"
APP_PRE_SNAPSHOT_SCHEMA = SHARED_SPEC / "bake_tracker_schema_pre_snapshot.sql"


def missing(path: Path) -> str:
    """Why a schema file cannot be used: for a skip or a StateUnavailable."""
    return (
        f"{path} is absent: the application's schema lives in ../shared/spec "
        f"(or set {ENV_VAR} to its folder)"
    )


def require(path: Path) -> Path:
    """Return ``path``, or skip the calling test saying which schema file is missing."""
    if not path.is_file():
        import pytest  # only a test calls this: the module itself needs no pytest

        pytest.skip(missing(path))
    return path
