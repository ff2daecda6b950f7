"""A smooth send rate shared by every connection of a run (CAMPAIGNS_SEND_RATE)."""

from __future__ import annotations

import asyncio
import time


class RateLimiter:
    """Spaces messages 1/rate seconds apart across all the tasks that share it.

    Each `wait()` reserves the next free slot on a schedule, so several connections
    interleave evenly instead of bursting. The schedule never banks idle time beyond
    one slot (a burst of about 1). Slots closer than the event loop can sleep (~1 ms)
    are let through at once; the schedule still advances, so the average rate holds
    at high rates too. `rate_per_second` 0 means unlimited, and then `wait()` costs
    next to nothing.
    """

    # The event loop cannot sleep much less than this (epoll has millisecond timeouts).
    _MIN_SLEEP = 0.001

    def __init__(self, rate_per_second: float) -> None:
        if rate_per_second < 0:
            raise ValueError("rate_per_second must not be negative")
        self.rate = rate_per_second
        self._interval = 1.0 / rate_per_second if rate_per_second else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        slot = self._next if self._next > now else now
        self._next = slot + self._interval
        delay = slot - now
        if delay > self._MIN_SLEEP:
            await asyncio.sleep(delay)
