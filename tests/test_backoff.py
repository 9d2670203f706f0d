"""Retry delays: the schedule, jitter, Retry-After and its cap."""

from __future__ import annotations

import random

import pytest

from webhookd.backoff import RETRY_AFTER_CAP, jittered, retry_delay, schedule_delay
from webhookd.config import DeliverySettings

SCHEDULE = DeliverySettings().retry_schedule


def test_default_schedule_matches_spec() -> None:
    assert SCHEDULE == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert DeliverySettings().max_attempts == 8
    # SPEC says "about 33 hours", but its own delays add up to 27 h 35 m (as Svix's do)
    assert sum(SCHEDULE) == 27 * 3600 + 35 * 60 + 5


@pytest.mark.parametrize(("failed", "delay"), [(1, 5), (2, 300), (7, 36000), (12, 36000)])
def test_schedule_delay_repeats_the_last_entry(failed: int, delay: float) -> None:
    assert schedule_delay(SCHEDULE, failed) == delay


def test_jitter_is_within_the_fraction_and_varies() -> None:
    rng = random.Random(1)
    values = [jittered(100.0, 0.2, rng) for _ in range(500)]
    assert min(values) >= 80.0 and max(values) <= 120.0
    assert max(values) - min(values) > 20.0  # actually spread, not constant


def test_no_jitter_is_exact() -> None:
    assert jittered(42.0, 0.0) == 42.0


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (None, 5.0),
        (1.0, 5.0),  # backoff is larger
        (600.0, 600.0),  # Retry-After is larger
        (10 * 3600.0, 5.0 + RETRY_AFTER_CAP),  # capped at backoff + 2 h
    ],
)
def test_retry_after(retry_after: float | None, expected: float) -> None:
    assert retry_delay(SCHEDULE, 1, 0.0, retry_after) == expected
