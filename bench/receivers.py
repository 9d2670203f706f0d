"""Receivers the bench runs in their own processes, on 127.0.0.1 only.

    python -m bench.receivers timestamp PORT   # 204 to every POST, records time.time() of
                                               # arrival by webhook-id; GET /records returns
                                               # {"records": [[webhook_id, unix_time], ...]}
    python -m bench.receivers blackhole PORT   # accepts connections, reads, never answers

Both stop on SIGTERM / SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from aiohttp import web


async def _serve_until_signalled(start: object) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def timestamp(port: int) -> None:
    records: list[tuple[str, float]] = []

    async def hook(request: web.Request) -> web.Response:
        arrived = time.time()
        await request.read()
        records.append((request.headers.get("webhook-id", ""), arrived))
        return web.Response(status=204)

    async def dump(request: web.Request) -> web.Response:
        return web.json_response({"records": records})

    app = web.Application()
    app.router.add_get("/records", dump)
    app.router.add_post("/{tail:.*}", hook)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    try:
        await _serve_until_signalled(runner)
    finally:
        await runner.cleanup()


class _Hole(asyncio.Protocol):
    """Reads everything, answers nothing, closes only when the client does."""

    def data_received(self, data: bytes) -> None:
        pass


async def blackhole(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Hole, "127.0.0.1", port, backlog=4096)
    try:
        await _serve_until_signalled(server)
    finally:
        server.close()


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    servers = {"timestamp": timestamp, "blackhole": blackhole}
    if mode not in servers:
        raise SystemExit(f"usage: receivers.py {{{'|'.join(servers)}}} PORT")
    try:
        import uvloop

        uvloop.run(servers[mode](port))
    except ImportError:  # pragma: no cover
        asyncio.run(servers[mode](port))


if __name__ == "__main__":
    main()
