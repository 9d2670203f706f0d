"""A loopback OTLP/HTTP trace receiver for the cost of tracing (bench.run --otlp-endpoint):
answers every export at once and counts the spans it decodes.

    .venv/bin/python -m bench.otlp_sink --port 4318 &
    .venv/bin/python -m bench.run --scenario throughput --quick --otlp-endpoint http://127.0.0.1:4318
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


async def serve(port: int) -> None:
    spans = 0

    async def export(request: web.Request) -> web.Response:
        nonlocal spans
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        spans += sum(len(s.spans) for r in message.resource_spans for s in r.scope_spans)
        return web.Response(content_type="application/x-protobuf", body=b"")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", export)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"otlp sink on http://127.0.0.1:{port}", flush=True)
    await stop.wait()
    await runner.cleanup()
    print(f"otlp sink: {spans} spans received", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=4318)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
