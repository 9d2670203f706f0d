"""Retry delays: the configured schedule, jittered, stretched by Retry-After within a cap."""

from __future__ import annotations

import random
from collections.abc import Sequence

RETRY_AFTER_CAP = 2 * 3600.0


def schedule_delay(schedule: Sequence[float], failed_attempt: int) -> float:
    """Delay before attempt `failed_attempt + 1`; the schedule's last entry repeats."""
    index = min(max(failed_attempt, 1) - 1, len(schedule) - 1)
    return schedule[index]


def jittered(delay: float, jitter: float, rng: random.Random | None = None) -> float:
    """delay * (1 ± jitter), uniformly, so a burst of failures does not retry in lockstep."""
    if jitter <= 0:
        return delay
    factor = (rng or random).uniform(1.0 - jitter, 1.0 + jitter)
    return delay * factor


def retry_delay(
    schedule: Sequence[float],
    failed_attempt: int,
    jitter: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds until the next attempt: max(backoff, Retry-After), capped at backoff + 2 h."""
    backoff = jittered(schedule_delay(schedule, failed_attempt), jitter, rng)
    if retry_after is None:
        return backoff
    return min(max(backoff, retry_after), backoff + RETRY_AFTER_CAP)
