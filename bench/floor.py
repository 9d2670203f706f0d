"""The floor of a latency figure, measured in the same run as the figure itself.

On a machine shared with other work, an absolute latency means little; what a scenario
reports is its figure over what the machine gives in the same minutes to the parts no code
of webhookd can go under: a bare aiohttp POST answered 202 by a bare aiohttp server (the
idle_floor module's, a process of its own) and a one-row commit of the engine (DuckDB on a
fresh file, or through asyncpg on the bench's PostgreSQL server). Each is timed alone,
N times 20 ms apart, as the latency scenario's idle phase sends its events.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import idle_floor
from bench.common import ENGINE, Figures
from bench.procfs import summary_ms
from tests.kit.procs import free_port


async def measure(n: int) -> Figures:
    """{"http": summary, "commit": summary} of n POSTs and n commits of ENGINE's kind."""
    port = free_port()
    server = subprocess.Popen(  # noqa: ASYNC220 - once per run, before anything is timed
        [sys.executable, "-m", "bench.idle_floor", "--serve", str(port)]
    )
    try:
        http = await idle_floor.http_202(port, n)
    finally:
        server.terminate()
        server.wait()
    if ENGINE.pg is not None:
        commit = await idle_floor.postgresql_commit(ENGINE.pg.url, n)
    else:
        with tempfile.TemporaryDirectory(prefix="webhookd-floor-") as tmp:
            # A thread: its 20 ms sleeps must not hold this event loop.
            commit = await asyncio.to_thread(idle_floor.duckdb_commit, Path(tmp), n)
    return {"http": summary_ms(http), "commit": summary_ms(commit)}


def p99(floor: Figures, *parts: str) -> float:
    """The sum of the parts' p99s (ms): `http`, `commit`, each part as often as named."""
    return round(sum(float(floor[part]["p99_ms"]) for part in parts), 2)


def ratio(figure: float | None, floor_ms: float) -> float | None:
    return None if figure is None or not floor_ms else round(figure / floor_ms, 2)
