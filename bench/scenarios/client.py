"""client: the HTTP client on the delivery path, aiohttp against pyreqwest (issue 26).

Four arms, in this process (uvloop, installed by bench.run before the loop exists), into
the bench's nginx on 127.0.0.1 answering 204, WORKERS POSTs at a time, each arm its own
client made before and closed after its timed loop:

  a. aiohttp_bare: the bench's bare loop (bench.baseline.post_all), pre-signed bodies;
  b. sender: webhookd.sender.Sender as the daemon builds it (daemon.py: pool_size =
     delivery.workers, default timeout and response cap, no CA, no client certificate, no
     proxy; allow_private_destinations=True, the only way to deliver to loopback), each POST
     signed as workers.py signs an attempt (signing.headers with the cached key, now);
  c. reqwest_bare: a bare pyreqwest loop (shared/HTTP.md's: max_connections(WORKERS)),
     pre-signed bodies;
  d. reqwest_sender: webhookd.reqwest_sender.ReqwestSender, signed per POST as in b.

a and c post to http://127.0.0.1:PORT/hook as the baseline does; b and d to
http://localhost:PORT/hook, so that the name is resolved as a receiver's would be (aiohttp's
resolver with its DNS cache in b, the Pinner's checked and cached answer and a pinned client
in d). With allow_private the guard's rule cannot refuse loopback, so its own cost is timed
apart: GuardedResolver over a static answer of a public address (no network), per answer; both
senders pay it once per name and TTL (aiohttp per new connection, after its DNS cache).

Per arm: POSTs/s (wall clock of the timed loop) and CPU per POST (this process's user +
system time over the loop, all threads: pyreqwest's runtime thread and aiohttp's resolver
threads included). The arms run in turn, the order rotated every repetition (--repeat N),
and every run is printed; the figures are medians, the ratios b/a, d/c, d/b are of medians.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from pyreqwest.client import ClientBuilder

from bench.baseline import build_requests, post_all
from bench.common import WORKERS, Figures, last_line, machine_load, repeats, started, table
from bench.events import canonical_body, event_data
from bench.procfs import MachineCpu
from bench.sink import Nginx
from webhookd import signing
from webhookd.config import Settings
from webhookd.guard import GuardedResolver
from webhookd.reqwest_sender import ReqwestSender
from webhookd.sender import Sender

ARMS = ("aiohttp_bare", "sender", "reqwest_bare", "reqwest_sender")
Timed = tuple[float, float, int]  # wall seconds, CPU seconds, failed POSTs


@functools.lru_cache(maxsize=64)
def _key(secret: str) -> signing.Key:
    return signing.secret_key(secret)  # as workers.py caches it


async def _bare_reqwest(requests: list[tuple[str, bytes, dict[str, str]]]) -> Timed:
    errors = 0
    async with ClientBuilder().max_connections(WORKERS).build() as client:
        todo = iter(requests)

        async def worker() -> None:
            nonlocal errors
            for url, body, headers in todo:
                try:
                    resp = await client.post(url).headers(headers).body_bytes(body).build().send()
                    if not 200 <= resp.status < 300:
                        errors += 1
                except Exception:
                    errors += 1

        started_at, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(WORKERS)))
        return time.perf_counter() - started_at, time.process_time() - cpu0, errors


class _Posting:
    """What b and d share: the events (bodies built once, as the store hands them over) and
    the per-attempt signing of workers.py."""

    def __init__(self, posts: int) -> None:
        self.secret = signing.new_secret()
        self.events = [
            (f"evt_cli_{i:08d}", canonical_body(f"evt_cli_{i:08d}", "t0", event_data(i)))
            for i in range(posts)
        ]

    async def run(self, sender: Any, url: str) -> Timed:
        errors = 0
        todo = iter(self.events)
        secrets = [self.secret]

        async def worker() -> None:
            nonlocal errors
            for event_id, body in todo:
                headers = signing.headers(
                    [_key(s) for s in secrets], event_id, int(time.time()), body
                )
                result = await sender.post(url, body, headers, None)
                if result.error is not None:
                    errors += 1

        started_at, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(WORKERS)))
        return time.perf_counter() - started_at, time.process_time() - cpu0, errors


def _delivery_settings() -> Any:
    return Settings().delivery  # the defaults the daemon would run with


async def _sender(posting: _Posting, url: str) -> Timed:
    d = _delivery_settings()
    sender = Sender(  # as webhookd.daemon builds it, on the default settings
        timeout=d.timeout,
        max_response_bytes=d.max_response_bytes,
        allow_private=True,
        pool_size=d.workers,
        user_agent=signing.USER_AGENT,
        ssl_context=None,
        client_contexts={},
        proxy=None,
    )
    await sender.start()
    try:
        return await posting.run(sender, url)
    finally:
        await sender.close()


async def _reqwest_sender(posting: _Posting, url: str) -> Timed:
    d = _delivery_settings()
    sender = ReqwestSender(
        timeout=d.timeout,
        max_response_bytes=d.max_response_bytes,
        allow_private=True,
        pool_size=d.workers,
        user_agent=signing.USER_AGENT,
    )
    await sender.start()
    try:
        return await posting.run(sender, url)
    finally:
        await sender.close()


class _Public(AbstractResolver):
    """A static answer of a public address (no DNS, nothing connected to)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host="93.184.215.14",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


async def guard_cost_us(n: int = 20_000) -> float:
    """Microseconds of one GuardedResolver answer over a static one (the guard's rule)."""
    guarded, bare = GuardedResolver(_Public()), _Public()
    for resolver in (bare, guarded):  # warm both
        await resolver.resolve("hooks.example.com", 443)
    t0 = time.perf_counter()
    for _ in range(n):
        await bare.resolve("hooks.example.com", 443)
    t1 = time.perf_counter()
    for _ in range(n):
        await guarded.resolve("hooks.example.com", 443)
    t2 = time.perf_counter()
    return round(((t2 - t1) - (t1 - t0)) / n * 1e6, 2)


def _figures(timed: Timed, posts: int, machine: dict[str, float]) -> Figures:
    seconds, cpu, errors = timed
    return {
        "per_second": round(posts / seconds, 1),
        "cpu_us_per_post": round(cpu / posts * 1e6, 1),
        "seconds": round(seconds, 2),
        "errors": errors,
        **machine,
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


async def run(args: argparse.Namespace) -> tuple[Figures, str]:
    posts = args.posts or (5_000 if args.quick else 20_000)
    repeat = repeats(args)
    figures: Figures = {
        "posts": posts,
        "workers": WORKERS,
        "repeat": repeat,
        "load_before": machine_load(),
    }
    runs: dict[str, list[Figures]] = {arm: [] for arm in ARMS}
    rows: list[list[Any]] = []
    with started(Nginx(args.nginx_workers)) as nginx:
        bare_url = f"{nginx.url}/hook"
        named_url = f"http://localhost:{nginx.port}/hook"
        requests = build_requests([bare_url], posts)
        posting = _Posting(posts)
        arms: dict[str, Callable[[], Awaitable[Timed]]] = {
            "aiohttp_bare": lambda: post_all(requests, WORKERS, 15.0),
            "sender": lambda: _sender(posting, named_url),
            "reqwest_bare": lambda: _bare_reqwest(requests),
            "reqwest_sender": lambda: _reqwest_sender(posting, named_url),
        }
        for r in range(repeat):
            order = ARMS[r % len(ARMS) :] + ARMS[: r % len(ARMS)]
            for arm in order:
                gc.collect()
                machine = MachineCpu(nginx.pids())
                timed = await arms[arm]()
                result = _figures(timed, posts, machine.stop(posts))
                runs[arm].append(result)
                rows.append(
                    [
                        r + 1,
                        arm,
                        f"{result['per_second']:,.0f}",
                        result["cpu_us_per_post"],
                        result["sink_cpu_us_per_post"],
                        result["machine_cores_busy"],
                        result["errors"],
                    ]
                )
                if result["errors"]:
                    print(f"  WARNING: {arm} run {r + 1}: {result['errors']} failed POSTs")
    table(
        f"every run ({posts:,} POSTs each, {WORKERS} at a time, order rotated per repetition)",
        ["rep", "arm", "POSTs/s", "CPU us/POST", "nginx us/POST", "cores busy", "errors"],
        rows,
    )
    med: dict[str, Figures] = {}
    for arm in ARMS:
        med[arm] = {
            "per_second": round(statistics.median(x["per_second"] for x in runs[arm]), 1),
            "cpu_us_per_post": round(statistics.median(x["cpu_us_per_post"] for x in runs[arm]), 1),
            "all_per_second": [x["per_second"] for x in runs[arm]],
            "all_cpu_us_per_post": [x["cpu_us_per_post"] for x in runs[arm]],
        }
    table(
        "medians",
        ["arm", "POSTs/s", "CPU us/POST", "runs: POSTs/s", "runs: CPU us/POST"],
        [
            [
                arm,
                f"{m['per_second']:,.0f}",
                m["cpu_us_per_post"],
                ",".join(f"{v:.0f}" for v in m["all_per_second"]),
                ",".join(f"{v:.0f}" for v in m["all_cpu_us_per_post"]),
            ]
            for arm, m in med.items()
        ],
    )
    pairs = (
        ("sender/aiohttp_bare", "sender", "aiohttp_bare"),
        ("reqwest_sender/reqwest_bare", "reqwest_sender", "reqwest_bare"),
        ("reqwest_sender/sender", "reqwest_sender", "sender"),
        ("reqwest_bare/aiohttp_bare", "reqwest_bare", "aiohttp_bare"),
    )
    ratios: dict[str, Figures] = {}
    for name, top, bottom in pairs:
        ratios[name] = {
            "rate": _ratio(med[top]["per_second"], med[bottom]["per_second"]),
            "cpu": _ratio(med[top]["cpu_us_per_post"], med[bottom]["cpu_us_per_post"]),
        }
    table(
        "ratios of the medians",
        ["ratio", "POSTs/s", "CPU per POST"],
        [[name, v["rate"], v["cpu"]] for name, v in ratios.items()],
    )
    guard_us = await guard_cost_us()
    saving = round(med["sender"]["cpu_us_per_post"] - med["reqwest_sender"]["cpu_us_per_post"], 1)
    print(
        f"\n  the guard's rule (GuardedResolver over a static answer): {guard_us} us per "
        "answer, paid once per name and TTL (10 s) by either sender"
    )
    print(f"  CPU per POST saved on the path, sender - reqwest_sender: {saving} us")
    figures.update(arms=med, runs=runs, ratios=ratios, guard_us=guard_us, saving_us=saving)
    figures["load_after"] = machine_load()
    line = last_line(
        "client",
        {
            "posts": posts,
            "repeat": repeat,
            **{f"{arm}_per_s": m["per_second"] for arm, m in med.items()},
            **{f"{arm}_cpu_us": m["cpu_us_per_post"] for arm, m in med.items()},
            "b_a_rate": ratios["sender/aiohttp_bare"]["rate"],
            "b_a_cpu": ratios["sender/aiohttp_bare"]["cpu"],
            "d_c_rate": ratios["reqwest_sender/reqwest_bare"]["rate"],
            "d_c_cpu": ratios["reqwest_sender/reqwest_bare"]["cpu"],
            "d_b_rate": ratios["reqwest_sender/sender"]["rate"],
            "d_b_cpu": ratios["reqwest_sender/sender"]["cpu"],
            "saving_us": saving,
            "guard_us": guard_us,
            "load": figures["load_after"],
        },
    )
    return figures, line
