"""The scanner's look-again after a notification (store/postgres/store.py, REPOLL): one
poke of a kind pending at a time. Each poke wakes every scanner and each of their scans
asked for one more, so pokes kept side by side multiplied: 8.7 scans per event at 50
events/s before, where one scan and a few look-agains a second will do."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from webhookd.store.postgres.listen import Listener


async def _never() -> Any:
    raise AssertionError("poke_later needs no connection")


def _listener() -> Listener:
    return Listener(_never, {"events": "s.events"}, lambda ok, problem: None)


async def test_of_pokes_asked_side_by_side_only_the_earliest_fires() -> None:
    listener = _listener()
    woken = listener.events["events"]
    for delay in (0.05, 0.01, 0.02, 0.03, 0.04):
        listener.poke_later("events", delay)
    await asyncio.wait_for(woken.wait(), 5.0)
    woken.clear()
    # The later ones were dropped: nothing sets the event again (each would have, at
    # 20 to 50 ms, without the rule).
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(woken.wait(), 0.3)
    await listener.close()


async def test_a_poke_asked_once_the_last_fired_fires_again() -> None:
    listener = _listener()
    woken = listener.events["events"]
    for _ in range(2):
        listener.poke_later("events", 0.01)
        await asyncio.wait_for(woken.wait(), 5.0)
        woken.clear()
    await listener.close()


async def test_closing_cancels_the_pending_poke() -> None:
    listener = _listener()
    listener.poke_later("events", 0.05)
    await listener.close()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(listener.events["events"].wait(), 0.3)
