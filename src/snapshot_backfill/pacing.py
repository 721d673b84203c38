"""How fast a run goes: the batch size adapted to a target duration, and pauses between batches.

A batch is one write transaction, and while it lasts the application waits for the rows (or,
on SQLite, the whole file) it holds. ``BatchSizer`` keeps each batch near a target duration,
between batches, as batched-migration frameworks do: the first batch is small (at most
``FIRST_BATCH_WITH_TARGET``); a batch over the target halves the next one; a full batch well
under it (less than half) grows the next by a quarter; the size stays within
1..``MAX_BATCH_SIZE``.
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


class BatchSizer:
    """The size of the next batch, given how long the last one took (``None``: fixed size)."""

    def __init__(self, size: int, max_seconds: Optional[float] = None) -> None:
        self.size = max(1, min(size, MAX_BATCH_SIZE))
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
            self.size = min(MAX_BATCH_SIZE, self.size + max(1, self.size // 4))
