"""The invariant battery as tests, on a scratch copy of the database ``--snapshot-backfill-url``
names (collected only with that option)::

    pytest --pyargs snapshot_backfill.testing --snapshot-backfill-url sqlite:///copy.db

The battery runs once per session (``snapshot_backfill_battery``); each check is a test of its
own, and a failed one prints its titled context: database, backend, run ids, fingerprint diff.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from snapshot_backfill.testing.battery_run import BatteryRun

battery_run = pytest.importorskip(
    "snapshot_backfill.testing.battery_run", reason="the battery is not installed"
)


@pytest.mark.parametrize("check", battery_run.CHECKS)
def test_battery(check: str, snapshot_backfill_battery: BatteryRun) -> None:
    failure = snapshot_backfill_battery.failure(check)
    if failure is not None:
        pytest.fail(failure, pytrace=False)
