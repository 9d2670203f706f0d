"""The daemon's life: open and rescue, serve, drain on SIGTERM, close cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from aiohttp import web

from webhookd import __version__, logs, tls
from webhookd.api import ApiSite, Services, build_app, runner_options
from webhookd.config import ConfigError, Settings
from webhookd.metrics import Metrics
from webhookd.notify import Notifier
from webhookd.proxy import parse_proxy
from webhookd.scanner import Scanner
from webhookd.senders import build_sender, client_in_use
from webhookd.signing import USER_AGENT
from webhookd.store.base import StoreUnavailable
from webhookd.store.engines import describe, make_engine
from webhookd.tracing import NoTracer, make_tracer
from webhookd.upkeep import AutoDisabler, LeaseRescuer, Periodic, Pruner
from webhookd.workers import RetryPolicy, WorkerPool

log = logs.get("webhookd.daemon")

EXIT_OK = 0
EXIT_CONFIG = 2


async def _listen(runner: web.AppRunner, settings: Settings) -> str:
    # ApiSite, not TCPSite/UnixSite: deadlines for slow clients and a connection cap.
    site = ApiSite(runner, settings.admin)
    await site.start()
    return site.listening


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.notifier = Notifier.from_env()
        self._stop = asyncio.Event()
        self._signals = 0
        self.ready = asyncio.Event()
        self.listening: str | None = None

    def request_stop(self, signame: str = "SIGTERM") -> None:
        self._signals += 1
        if self._signals > 1:
            # A second signal: leave now. Leases and the database's own durability mean
            # nothing is lost; in-flight rows are rescued at the next start.
            log.warning("second signal: exiting at once", signal=signame)
            os._exit(1)
        log.info("stopping", signal=signame, grace_seconds=self.settings.shutdown.grace)
        self._stop.set()

    async def run(self) -> int:
        s = self.settings
        try:
            token = s.admin.resolve_token()
            producer_tokens = s.admin.resolve_producer_tokens(token)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("configuration error", problem=problem)
            return EXIT_CONFIG
        try:
            engine = make_engine(s)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("configuration error", problem=problem)
            return EXIT_CONFIG
        store = engine.store
        try:
            contexts = tls.load_contexts(s)
            proxy_url = s.delivery.resolve_proxy()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("configuration error", problem=problem)
            return EXIT_CONFIG
        try:
            tracer = make_tracer(s.tracing.otlp_endpoint)
        except ImportError as exc:
            log.error(
                "configuration error",
                problem=f"tracing.otlp_endpoint needs the OpenTelemetry SDK "
                f"(pip install 'webhookd[otel]'): {exc}",
            )
            return EXIT_CONFIG
        metrics = Metrics()
        try:
            proxy = parse_proxy(proxy_url, s.delivery.no_proxy) if proxy_url else None
            sender = build_sender(
                s.delivery.http_client,
                timeout=s.delivery.timeout,
                max_response_bytes=s.delivery.max_response_bytes,
                allow_private=s.delivery.allow_private_destinations,
                pool_size=s.delivery.workers,
                user_agent=USER_AGENT,
                contexts=contexts,
                proxy=proxy,
            )
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("configuration error", problem=problem)
            return EXIT_CONFIG
        pool = WorkerPool(
            store,
            sender,
            metrics,
            workers=s.delivery.workers,
            per_webhook=s.delivery.per_webhook_concurrency,
            claim_batch=s.delivery.claim_batch,
            lease=s.delivery.lease,
            timeout=s.delivery.timeout,
            poll_interval=s.scanner.poll_interval,
            policy=RetryPolicy(
                s.delivery.max_attempts, s.delivery.retry_schedule, s.delivery.jitter
            ),
            tracer=None if isinstance(tracer, NoTracer) else tracer,
            notifier=engine.notifier,
        )
        scanner = Scanner(
            store,
            batch_size=s.scanner.batch_size,
            poll_interval=s.scanner.poll_interval,
            workers=pool,
            notifier=engine.notifier,
        )
        upkeep: list[Periodic] = [
            # On a shared database a dead daemon is found by its heartbeat: look often.
            LeaseRescuer(
                store,
                max(1.0, min(s.delivery.lease / 2, s.database.peer_timeout / 3)),
                pool.wake,
                engine.peer,
            ),
            Pruner(
                store,
                s.retention.prune_interval,
                s.retention.delivered_ttl,
                s.retention.log_ttl,
                s.retention.prune_batch,
                engine.peer,
            ),
            AutoDisabler(
                store,
                # Often enough for failing_after too; at most a minute, as before, so a
                # tally of dead deliveries waits at most two minutes for its report.
                min(
                    60.0,
                    max(0.5, s.delivery.disable_after / 10),
                    max(0.5, s.operational.failing_after / 10),
                ),
                s.delivery.disable_after,
                metrics,
                engine.peer,
                failing_after=s.operational.failing_after,
            ),
        ]
        svc = Services(
            settings=s,
            store=store,
            scanner=scanner,
            pool=pool,
            sender=sender,
            metrics=metrics,
            token=token,
            producer_tokens=producer_tokens,
            tracer=tracer,
        )
        # Listen first: while migrations and the start-up rescue run, /readyz says so.
        runner = web.AppRunner(build_app(svc), **runner_options(s.admin))
        await runner.setup()
        try:
            listening = await _listen(runner, s)
        except OSError as exc:
            log.error("cannot listen", listen=s.admin.listen, problem=str(exc))
            await runner.cleanup()
            tracer.close()
            return EXIT_CONFIG
        self.listening = listening
        log.info(
            "listening; opening the database",
            listen=listening,
            engine=s.database.engine,
            database=describe(s),
        )
        try:
            await store.open()
        except StoreUnavailable as exc:
            log.error("cannot open the database", problem=str(exc))
            await runner.cleanup()
            tracer.close()
            return EXIT_CONFIG
        if store.migrations_applied:
            log.info("schema migrations applied", versions=store.migrations_applied)
        rescued = 0 if engine.owner is None else await engine.owner.rescue_orphans()
        if rescued:
            log.warning("re-driving deliveries left in flight by the last run", count=rescued)
        await sender.start()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)

        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(scanner.run(), name="scanner"),
            asyncio.create_task(pool.run(), name="workers"),
            *(asyncio.create_task(u.run(), name=u.name) for u in upkeep),
        ]
        # The engine lost for good (DuckDB's database process died) is a crash of the
        # daemon: stop, and exit non-zero. PostgreSQL reconnects instead.
        lost = asyncio.create_task(store.lost.wait(), name="database process")
        tasks.append(lost)
        watchdog = asyncio.create_task(
            self.notifier.run_watchdog(lambda: store.healthy() and all(not t.done() for t in tasks))
        )
        svc.ready = True
        log.info(
            "webhookd ready",
            version=__version__,
            listen=listening,
            engine=s.database.engine,
            database=describe(s),
            workers=s.delivery.workers,
            http_client=client_in_use(s.delivery.http_client, proxy),
            rescued=rescued,
        )
        self.notifier.ready(f"serving on {listening}")
        self.ready.set()

        stop_wait = asyncio.create_task(self._stop.wait())
        await asyncio.wait([stop_wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
        crashed = [t for t in tasks if t.done()]
        if lost.done():
            log.error("the database process exited; stopping")
        for task in crashed:
            if not task.cancelled() and task.exception() is not None:
                log.error(
                    "a service stopped unexpectedly",
                    service=task.get_name(),
                    error=repr(task.exception()),
                )

        # Shutdown: no new work, finish or release what is in flight, close cleanly.
        svc.ready = False
        self.notifier.stopping("draining in-flight deliveries")
        scanner.stop()
        for u in upkeep:
            u.stop()
        await runner.cleanup()
        await pool.shutdown(s.shutdown.grace)
        watchdog.cancel()
        stop_wait.cancel()
        lost.cancel()
        await asyncio.gather(*tasks, watchdog, stop_wait, return_exceptions=True)
        await sender.close()
        await store.close()
        # Sends the spans still waiting (the SDK's exporter blocks: off the loop).
        await asyncio.get_running_loop().run_in_executor(None, tracer.close)
        log.info("webhookd stopped")
        return EXIT_OK if not crashed or self._stop.is_set() else 1


def run(settings: Settings) -> int:
    logs.configure(settings.logging.format, settings.logging.level)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        runner = asyncio.run

    async def main() -> int:
        return await Daemon(settings).run()

    result: int = runner(main())
    return result
