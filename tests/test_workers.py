"""How far claims may run ahead of the per-webhook cap, given the lease."""

from __future__ import annotations

import pytest

from webhookd.workers import MAX_PREFETCH, prefetch_depth


@pytest.mark.parametrize(
    ("lease", "timeout", "depth"),
    [
        (600.0, 15.0, 39),  # 39 rounds of 15 s, then the attempt: 600 s
        (3600.0, 1.0, MAX_PREFETCH),  # 3599 rounds would fit: capped
        (60.0, 15.0, 3),  # wait 3 x 15 s, attempt 15 s: 60 s
        (30.0, 15.0, 1),  # never less than one round
        (16.0, 15.0, 1),
    ],
)
def test_prefetch_depth_fits_in_the_lease(lease: float, timeout: float, depth: int) -> None:
    got = prefetch_depth(lease, timeout)
    assert got == depth
    if got > 1:
        assert (got + 1) * timeout <= lease
