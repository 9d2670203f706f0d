"""Least-privilege tokens: `admin.producer_token_file` holds tokens (one a line) that may only
POST /v1/events; the operator token (`admin.token_file`) may call everything.

* a producer token gets 202 on events and 403 on every other route of the router (walked,
  so a new route is covered), and a 403 does nothing;
* a file with several tokens, blank lines and comments; bad lines named by number only;
* producers rotated one at a time while the daemon runs;
* no token in the logs, in answers or in `check-config`, and a bad file stops the start.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from conftest import (
    REPO,
    TOKEN,
    Api,
    DaemonProcess,
    config_sections,
    make_settings,
    running,
    to_toml,
)

from tests.test_secrets_never_leak import malformed_requests, raw_exchange
from webhookd.api import Services, build_app
from webhookd.api.tokens import RECHECK_INTERVAL
from webhookd.config import ConfigError, Settings, producer_tokens

PRODUCER_A = "prod_a_" + "a1" * 12
PRODUCER_B = "prod_b_" + "b2" * 12
FILE_TEXT = f"""# producers of webhookd, one token a line
# billing service, since 2024-05
{PRODUCER_A}

   # shipping service (indented comment, blank lines around it)

   {PRODUCER_B}
"""


def routes() -> list[tuple[str, str]]:
    """Every (method, path) the daemon serves, from its own router, parameters filled in."""
    app = build_app(cast(Services, SimpleNamespace(settings=Settings())))
    found = []
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        found.append((route.method, re.sub(r"\{[^}]+\}", "x", canonical)))
    return found


def producer_file(tmp_path: Path, text: str = FILE_TEXT) -> Path:
    path = tmp_path / "producer.tokens"
    path.write_text(text)
    return path


async def call(
    session: aiohttp.ClientSession, base: str, method: str, path: str, token: str, body: Any
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with session.request(method, base + path, data=data, headers=headers) as resp:
        text = await resp.text()
        if resp.content_type != "application/json" or not text:
            return resp.status, text or None
        return resp.status, json.loads(text)


# -- the file -----------------------------------------------------------------------------


def test_a_file_with_several_tokens_blank_lines_and_comments() -> None:
    assert producer_tokens(FILE_TEXT, "f") == [PRODUCER_A, PRODUCER_B]
    assert producer_tokens("", "f") == []
    assert producer_tokens("# only a comment\n\n", "f") == []
    # Repeated lines are one token; CRLF line ends and trailing spaces are trimmed.
    assert producer_tokens(f"{PRODUCER_A}\r\n{PRODUCER_A}  \r\n", "f") == [PRODUCER_A]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("short-token", "at least 16 characters"),
        (f"{PRODUCER_A} # billing", "one word"),
        (f"billing {PRODUCER_A}", "one word"),
        ("tab\tseparated-token-0123456789", "one word"),
        (TOKEN, "the operator's token"),
    ],
)
def test_a_bad_line_is_named_by_number_never_by_its_text(line: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        producer_tokens(f"{PRODUCER_B}\n# comment\n{line}\n", "/etc/p", TOKEN)
    [message] = caught.value.problems
    assert message.startswith("admin.producer_token_file: '/etc/p' line 3: "), message
    assert problem in message
    for word in line.split():
        assert len(word) < 6 or word not in message


def test_unset_means_no_producer_tokens(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert settings.admin.producer_token_file is None
    assert settings.admin.resolve_producer_tokens(TOKEN) == []


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, admin={"producer_token_file": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match=r"admin\.producer_token_file: cannot read"):
        settings.admin.resolve_producer_tokens(TOKEN)


# -- what a producer token may do -----------------------------------------------------------


async def test_producer_tokens_may_only_post_events(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, admin={"producer_token_file": str(producer_file(tmp_path))})
    event = {"type": "order.created", "data": {"n": 1}}
    async with running(settings) as d, Api(d.url) as api, aiohttp.ClientSession() as session:
        for n, token in enumerate((PRODUCER_A, PRODUCER_B)):
            got = await call(session, d.url, "POST", "/v1/events", token, {**event, "id": f"e{n}"})
            assert got == (202, {"ids": [f"e{n}"]})
            # A list of events, too.
            got = await call(session, d.url, "POST", "/v1/events", token, [event, event])
            assert got[0] == 202
        # Bad input from a producer is the same 400 as from the operator.
        bad = await call(session, d.url, "POST", "/v1/events", PRODUCER_A, {"type": 5, "data": 1})
        assert bad[0] == 400 and bad[1]["error"]["code"] == "invalid_event"

        webhook = await api.create_webhook("http://127.0.0.1:9/hook")
        every_route = [*routes(), ("GET", "/v1/no-such-route"), ("PUT", "/v1/events")]
        refused = 0
        for method, path in every_route:
            path = path.replace("/webhooks/x", f"/webhooks/{webhook['webhook_id']}")
            body = {"url": "http://127.0.0.1:9/x"} if method in ("POST", "PATCH") else None
            status, answer = await call(session, d.url, method, path, PRODUCER_B, body)
            if (method, path) == ("POST", "/v1/events") or path == "/healthz":
                assert status in (200, 400), (method, path, status)
                continue
            assert status == 403, (method, path, status, answer)
            refused += 1
            if method != "HEAD":
                assert answer["error"]["code"] == "forbidden"
                assert "POST /v1/events" in answer["error"]["message"]
                assert PRODUCER_B not in json.dumps(answer)
        assert refused == len(every_route) - 3  # all but events, GET and HEAD /healthz

        # The operator token still calls everything; a 403 changed nothing.
        assert [w["webhook_id"] for w in (await api.ok("GET", "/v1/webhooks"))["items"]] == [
            webhook["webhook_id"]
        ]
        for method, path in routes():
            path = path.replace("/webhooks/x", f"/webhooks/{webhook['webhook_id']}")
            if method == "DELETE":
                continue
            status, _ = await call(session, d.url, method, path, TOKEN, None)
            assert status not in (401, 403), (method, path, status)
        # Neither a comment nor a wrong token is a token.
        for token in ("# billing service, since 2024-05", "prod_c_" + "c3" * 12, PRODUCER_A[:-1]):
            status, _ = await call(session, d.url, "POST", "/v1/events", token, event)
            assert status == 401, token


async def test_producers_are_rotated_one_at_a_time_while_running(tmp_path: Path) -> None:
    path = producer_file(tmp_path, f"{PRODUCER_A}\n")
    settings = make_settings(tmp_path, admin={"producer_token_file": str(path)})
    event = {"type": "t", "data": {}}

    async def status_of(session: aiohttp.ClientSession, base: str, token: str) -> int:
        return (await call(session, base, "POST", "/v1/events", token, event))[0]

    async def eventually(session: aiohttp.ClientSession, base: str, token: str, want: int) -> None:
        end = time.monotonic() + RECHECK_INTERVAL + 5
        while (got := await status_of(session, base, token)) != want:
            assert time.monotonic() < end, (token[:6], got, want)
            await asyncio.sleep(0.1)

    async with running(settings) as d, aiohttp.ClientSession() as session:
        assert await status_of(session, d.url, PRODUCER_A) == 202
        assert await status_of(session, d.url, PRODUCER_B) == 401
        # 1. add B beside A: both work.
        path.write_text(f"{PRODUCER_A}\n{PRODUCER_B}\n")
        await eventually(session, d.url, PRODUCER_B, 202)
        assert await status_of(session, d.url, PRODUCER_A) == 202
        # 2. remove A: B goes on, A is refused.
        path.write_text(f"# A retired\n{PRODUCER_B}\n")
        await eventually(session, d.url, PRODUCER_A, 401)
        assert await status_of(session, d.url, PRODUCER_B) == 202
        # A file that cannot be used keeps the tokens in force, and says why.
        path.write_text(f"{PRODUCER_B}\ntoo-short\n")
        await asyncio.sleep(RECHECK_INTERVAL + 0.2)
        assert await status_of(session, d.url, PRODUCER_B) == 202
        path.unlink()
        await asyncio.sleep(RECHECK_INTERVAL + 0.2)
        assert await status_of(session, d.url, PRODUCER_B) == 202
        # The operator token is never a producer's.
        path.write_text(f"{TOKEN}\n")
        await asyncio.sleep(RECHECK_INTERVAL + 0.2)
        assert await status_of(session, d.url, PRODUCER_B) == 202
        async with Api(d.url) as api:
            assert (await api.ok("GET", "/v1/status"))["workers"] > 0


# -- never logged, never in check-config, a bad file stops the start --------------------------


def run_webhookd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKD_")}
    return subprocess.run(
        [sys.executable, "-m", "webhookd", *args],
        env={**clean, **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def leaks(text: str | bytes, tokens: list[str]) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    needles = [(t, n) for t in tokens for n in (t.encode(), json.dumps(t)[1:-1].encode())]
    return [token[:8] for token, needle in needles if needle in data]


async def test_producer_tokens_never_logged_echoed_or_shown_by_check_config(
    tmp_path: Path, daemon_process: list[DaemonProcess]
) -> None:
    a = "prod_" + secrets.token_urlsafe(24)
    b = "prod_" + secrets.token_urlsafe(24)
    tokens_file = producer_file(tmp_path, f"# two producers\n{a}\n\n{b}\n")
    sections = config_sections(
        tmp_path,
        admin={"producer_token_file": str(tokens_file)},
        logging={"format": "json", "level": "debug"},
    )
    config = tmp_path / "webhookd.toml"
    config.write_text(to_toml(sections))

    checked = run_webhookd("check-config", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    shown = json.loads(checked.stdout)
    assert shown["admin"]["producer_token_file"] == str(tokens_file)
    assert leaks(checked.stdout + checked.stderr, [a, b]) == []

    log_path = tmp_path / "daemon.log"
    daemon = DaemonProcess(config, log_path)
    daemon_process.append(daemon)
    await asyncio.to_thread(daemon.start)
    answers: list[bytes] = []
    async with aiohttp.ClientSession() as session:
        for token in (a, b):
            for method, path, body in (
                ("POST", "/v1/events", {"type": "t", "data": {"token": "x"}}),
                ("POST", "/v1/events", {"type": 5, "data": 1}),
                ("GET", "/v1/status", None),
                ("POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/"}),
                ("GET", "/v1/nothing", None),
            ):
                status, answer = await call(session, daemon.url, method, path, token, body)
                assert status in (202, 400, 403), (method, path, status)
                answers.append(json.dumps(answer).encode())
    host, _, port = daemon.url.removeprefix("http://").rpartition(":")
    for name, raw in malformed_requests(a.encode()).items():
        answer = await asyncio.to_thread(raw_exchange, host, int(port), raw)
        assert 400 <= int(answer.split(b" ", 2)[1]) < 500, (name, answer)
        answers.append(answer)
    # Rotated in while running: the new token is kept out of the logs too.
    c = "prod_" + secrets.token_urlsafe(24)
    tokens_file.write_text(f"{a}\n{b}\n{c}\n")
    async with aiohttp.ClientSession() as session:
        end = time.monotonic() + 10
        while (got := await call(session, daemon.url, "GET", "/v1/status", c, None))[0] != 403:
            assert time.monotonic() < end, got
            await asyncio.sleep(0.1)
    assert await asyncio.to_thread(daemon.stop) == 0

    printed = log_path.read_text(errors="replace")
    assert '"producer tokens read"' in printed and '"producer_tokens": 2' in printed
    assert '"producer tokens re-read"' in printed
    assert "Traceback" not in printed
    assert leaks(printed, [a, b, c]) == []
    assert [leaks(answer, [a, b, c]) for answer in answers] == [[]] * len(answers)


def test_a_bad_producer_file_stops_check_config_and_the_start(tmp_path: Path) -> None:
    secret_line = "s3cr3t"  # too short, and must not be shown
    config = tmp_path / "webhookd.toml"
    for contents, problem in (
        (None, "admin.producer_token_file: cannot read"),
        (f"{PRODUCER_A}\n{secret_line}\n", "line 2: a token of at least 16 characters"),
    ):
        path = tmp_path / "producer.tokens"
        path.unlink(missing_ok=True)
        if contents is not None:
            path.write_text(contents)
        config.write_text(
            to_toml(config_sections(tmp_path, admin={"producer_token_file": str(path)}))
        )
        checked = run_webhookd("check-config", "--config", str(config))
        assert checked.returncode == 2, checked
        assert problem in checked.stderr
        assert secret_line not in checked.stderr + checked.stdout
        assert PRODUCER_A not in checked.stderr + checked.stdout
        started = run_webhookd("run", "--config", str(config))
        assert started.returncode == 2, started
        assert problem in started.stdout + started.stderr
        assert secret_line not in started.stdout + started.stderr
