"""The pytest plugin of snapshot-backfill (registered as ``snapshot_backfill``)."""

from __future__ import annotations

import pytest

from snapshot_backfill.testing.states import SLOW_STATES, STATE_NAMES

# The named states as pytest parameters, the slow ones marked (still in every default run).
STATE_PARAMS = [
    pytest.param(name, id=name, marks=[pytest.mark.slow] if name in SLOW_STATES else [])
    for name in STATE_NAMES
]
