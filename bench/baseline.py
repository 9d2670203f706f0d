"""The baseline: a bare uvloop + aiohttp loop POSTing pre-built, signed webhook bodies.

No database, no queue, no logging: the most this machine's Python can push through one
shared ClientSession to the same sink with the same concurrency as the daemon. Run as a
subprocess (its own core and GIL, like the daemon); prints one JSON line:
{"posts", "seconds", "per_second", "errors", "cpu_us_per_post", "workers", ...}.

    python -m bench.baseline --url http://127.0.0.1:PORT/hook --posts 20000 --workers 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp

from bench.events import canonical_body, event_data
from webhookd import signing


def build_requests(urls: list[str], posts: int) -> list[tuple[str, bytes, dict[str, str]]]:
    """One (url, body, headers) per POST, signed as the daemon signs (fresh secret)."""
    key = signing.secret_key(signing.new_secret())
    now = int(time.time())
    requests = []
    for i in range(posts):
        event_id = f"evt_base_{i:08d}"
        event_type = f"t{i % len(urls)}"
        body = canonical_body(event_id, event_type, event_data(i))
        requests.append((urls[i % len(urls)], body, signing.headers([key], event_id, now, body)))
    return requests


async def post_all(
    requests: list[tuple[str, bytes, dict[str, str]]], workers: int, request_timeout: float
) -> tuple[float, float, int]:
    connector = aiohttp.TCPConnector(limit=workers)
    errors = 0
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=request_timeout),
        skip_auto_headers=("Accept", "Accept-Encoding"),
    ) as session:
        todo = iter(requests)

        async def worker() -> None:
            nonlocal errors
            for url, body, headers in todo:  # the shared iterator hands each POST out once
                try:
                    async with session.post(
                        url, data=body, headers=headers, allow_redirects=False
                    ) as resp:
                        await resp.read()
                        if not 200 <= resp.status < 300:
                            errors += 1
                except (aiohttp.ClientError, OSError):
                    errors += 1

        started = time.perf_counter()
        cpu0 = time.process_time()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return time.perf_counter() - started, time.process_time() - cpu0, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", action="append", required=True)
    parser.add_argument("--posts", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=15.0)
    args = parser.parse_args()
    for url in args.url:
        if not url.startswith("http://127.0.0.1:"):
            raise SystemExit(f"the baseline posts to 127.0.0.1 only, not {url!r}")
    requests = build_requests(args.url, args.posts)
    # uvloop.run makes the loop itself: installed inside a running loop, uvloop would
    # change nothing (and the bare loop would run about 13 % slower than it can).
    try:
        import uvloop

        seconds, cpu, errors = uvloop.run(post_all(requests, args.workers, args.timeout))
        loop = "uvloop"
    except ImportError:  # pragma: no cover
        seconds, cpu, errors = asyncio.run(post_all(requests, args.workers, args.timeout))
        loop = "asyncio"
    body_bytes = sum(len(r[1]) for r in requests) / max(1, len(requests))
    print(
        json.dumps(
            {
                "posts": args.posts,
                "seconds": round(seconds, 3),
                "per_second": round(args.posts / seconds, 1),
                "errors": errors,
                "cpu_us_per_post": round(cpu / args.posts * 1e6, 1),
                "workers": args.workers,
                "mean_body_bytes": round(body_bytes, 1),
                "loop": loop,
            }
        )
    )


if __name__ == "__main__":
    main()
