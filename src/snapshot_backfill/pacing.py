"""How fast a run goes: the batch size adapted to a target duration, and pauses between batches.

A batch is one write transaction, and while it lasts the application waits for the rows (or,
on SQLite, the whole file) it holds. ``BatchSizer`` keeps each batch near a target duration,
between batches, as batched-migration frameworks do: the first batch is small (at most
``FIRST_BATCH_WITH_TARGET``); a batch over the target halves the next one; a full batch well
under it (less than half) grows the next by a quarter; the size stays within 1 and the
size asked for (``--batch-size``, at most ``MAX_BATCH_SIZE``).

Between two batches the migrator holds no lock. PostgreSQL and MariaDB queue a waiting
statement and grant it the lock as soon as a batch commits; SQLite does not: a connection
that finds the file locked sleeps and tries again, up to ``SQLITE_LONGEST_BUSY_SLEEP_S``
apart, and misses a gap shorter than its sleep. Back-to-back batches then keep an
application waiting through many of them (measured: 1.2 s behind batches of 60 ms). So on
SQLite a run pauses ``SQLITE_DEFAULT_PAUSE_S`` between batches by default, longer than that
sleep: whatever waits gets the file within one batch and one pause.
"""

from __future__ import annotations

from typing import Optional

# Each batch's run ids go to the database in one statement; stay well under every limit.
MAX_BATCH_SIZE = 10000
# A batch at most this long by default: well inside the application's 5 s busy timeout, and
# a wait the application hardly notices.
DEFAULT_MAX_BATCH_SECONDS = 0.5
# With a target duration, the first batch is at most this large.
FIRST_BATCH_WITH_TARGET = 500
# Leave runs younger than this to the application (by created_at): it may be about to write
# their snapshot itself, in a second transaction.
DEFAULT_MIN_AGE_S = 300.0
# SQLite's default busy handler (sqlite3_busy_timeout, which Python's ``timeout=`` and our
# busy_timeout pragma set) sleeps 1, 2, 5, 10, ... then 100 ms between tries.
SQLITE_LONGEST_BUSY_SLEEP_S = 0.1
# Longer than that sleep, with room for a coarse timer (Windows' default tick is 15.6 ms).
SQLITE_DEFAULT_PAUSE_S = 0.12


def default_pause(dialect_name: str) -> float:
    """The pause between batches when none is asked for: SQLite's waiters need a gap."""
    return SQLITE_DEFAULT_PAUSE_S if dialect_name == "sqlite" else 0.0


class BatchSizer:
    """The size of the next batch, given how long the last one took (``None``: fixed size)."""

    def __init__(self, size: int, max_seconds: Optional[float] = None) -> None:
        # --batch-size is the ceiling: the target only ever makes batches smaller than asked.
        self.ceiling = max(1, min(size, MAX_BATCH_SIZE))
        self.size = self.ceiling
        if max_seconds is not None:
            # Nothing is known of this database's speed yet: the first batch is a small probe,
            # and the size grows from there (one batch of 5,000 took 1 s on a loaded server).
            self.size = min(self.size, FIRST_BATCH_WITH_TARGET)
        self.max_seconds = max_seconds
        self.longest_s = 0.0

    def observe(self, seconds: float, rows: int) -> None:
        """Record a batch of ``rows`` that took ``seconds``; adapt the next size."""
        self.longest_s = max(self.longest_s, seconds)
        if self.max_seconds is None:
            return
        if seconds > self.max_seconds:
            self.size = max(1, self.size // 2)
        elif seconds < self.max_seconds / 2 and rows >= self.size:
            # Only a full batch says the size was the limit; the last, short one says nothing.
            self.size = min(self.ceiling, self.size + max(1, self.size // 4))
