"""Secrets never leave the daemon except in the two answers made to show them.

A real `python -m webhookd run` subprocess (debug logging, stdout captured) goes through
a whole life: webhooks created (one secret generated, one supplied), a secret rotated,
deliveries signed by both secrets, a receiver answering 500 then 204, every listing
route, the test route, the CLI, and `check-config` with the admin token in the
environment. Then everything the daemon printed, every API answer and every CLI output
is searched for every secret (whole, its base64 part, its key in hex) and for the admin
tokens. Only the create and rotate answers may hold a webhook secret.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

from tests.conftest import REPO, TOKEN, DaemonProcess, config_sections, to_toml
from tests.kit.api import Api
from tests.receivers import Recorder, Reply

DEADLINE = 20.0


def needles(secret: str) -> list[str]:
    """Forms a webhook secret could leak in: whole, the base64 after whsec_, the key in hex."""
    encoded = secret.removeprefix("whsec_")
    return [secret, encoded, base64.b64decode(encoded).hex()]


class Transcript(Api):
    """The kit's API client, keeping every answer as raw text with what was asked."""

    def __init__(self, base: str, token: str) -> None:
        super().__init__(base, token)
        self.answers: list[tuple[str, int, str]] = []

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        keep: bool = True,
    ) -> tuple[int, str]:
        status, text = await self.text(method, path, body, token=token)
        if keep:
            self.answers.append((f"{method} {path}", status, text))
        return status, text

    async def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, text = await self.call(method, path, body, **kw)
        assert 200 <= status < 300, (method, path, status, text)
        return json.loads(text) if text.startswith(("{", "[")) else text


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhookd", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )


async def wait_delivered(api: Transcript, count: int) -> list[dict[str, Any]]:
    end = time.monotonic() + DEADLINE
    while True:
        page = await api.ok("GET", "/v1/deliveries?limit=1000", keep=False)
        items: list[dict[str, Any]] = page["items"]
        if len(items) == count and all(i["status"] == "delivered" for i in items):
            return items
        assert time.monotonic() < end, items
        await asyncio.sleep(0.05)


async def test_secrets_appear_only_in_create_and_rotate_answers(
    tmp_path: Path, daemon_process: list[DaemonProcess]
) -> None:
    admin_token = "adm_" + secrets.token_urlsafe(32)
    env = {**os.environ, "WEBHOOKD_ADMIN__TOKEN": admin_token}
    env.pop("WEBHOOKD_CONFIG", None)
    sections = config_sections(
        tmp_path,
        delivery={"max_attempts": 5, "retry_schedule": ["100ms"], "rotation_grace": "1h"},
        logging={"format": "json", "level": "debug"},
    )
    config = tmp_path / "webhookd.toml"
    config.write_text(to_toml(sections))
    log_path = tmp_path / "daemon.log"
    daemon = DaemonProcess(config, log_path, env={"WEBHOOKD_ADMIN__TOKEN": admin_token})
    daemon_process.append(daemon)
    supplied = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    cli_outputs: list[tuple[str, str]] = []

    async with Recorder(status=500) as rx:
        await asyncio.to_thread(daemon.start)
        async with Transcript(daemon.url, admin_token) as api:
            # --- the answers allowed to show a secret, each exactly once -----------------
            status, created_text = await api.call(
                "POST", "/v1/webhooks", {"url": rx.url_for("/a")}, keep=False
            )
            assert status == 201, created_text
            created = json.loads(created_text)
            first = created["secret"]
            status, supplied_text = await api.call(
                "POST", "/v1/webhooks", {"url": rx.url_for("/b"), "secret": supplied}, keep=False
            )
            assert status == 201, supplied_text
            other = json.loads(supplied_text)
            assert other["secret"] == supplied
            wid, other_id = created["webhook_id"], other["webhook_id"]
            status, rotated_text = await api.call(
                "POST", f"/v1/webhooks/{wid}/rotate-secret", keep=False
            )
            assert status == 200, rotated_text
            rotated = json.loads(rotated_text)["secret"]
            assert len({first, rotated, supplied}) == 3
            for text, secret in (
                (created_text, first),
                (supplied_text, supplied),
                (rotated_text, rotated),
            ):
                assert secret in text  # the positive control: the search finds a secret

            # --- deliveries: 500 first, then 204 ------------------------------------------
            emitted = await api.ok("POST", "/v1/events", {"type": "t", "data": {"x": 1}})
            (event_id,) = emitted["ids"]
            await rx.wait_for_requests(2, deadline=DEADLINE)
            rx.reply = Reply(status=204)
            await wait_delivered(api, 2)
            for req in rx.requests:
                if req.path == "/a":
                    Webhook(first).verify(req.body, dict(req.headers))
                    Webhook(rotated).verify(req.body, dict(req.headers))
                else:
                    Webhook(supplied).verify(req.body, dict(req.headers))
            assert {r.path for r in rx.requests if r.headers["webhook-id"] == event_id} == {
                "/a",
                "/b",
            }

            # --- every other answer --------------------------------------------------------
            await api.ok("GET", "/v1/webhooks")
            await api.ok("GET", f"/v1/webhooks/{wid}")
            await api.ok("GET", f"/v1/webhooks/{other_id}")
            await api.ok("PATCH", f"/v1/webhooks/{other_id}", {"description": "renamed"})
            await api.ok("POST", f"/v1/webhooks/{wid}/test")
            await api.ok("GET", "/v1/deliveries")
            await api.ok("GET", f"/v1/deliveries?webhook_id={wid}")
            log = await api.ok("GET", f"/v1/deliveries/{wid}/{event_id}/attempts")
            assert [a["status_code"] for a in log["items"]] == [500, 204]
            await api.ok("GET", f"/v1/deliveries/{other_id}/{event_id}/attempts")
            await api.ok("POST", "/v1/replay", {"event_id": event_id, "webhook_id": other_id})
            await wait_delivered(api, 2)
            await api.ok("GET", "/v1/status")
            await api.ok("GET", "/metrics")
            await api.ok("GET", "/healthz")
            await api.ok("GET", "/readyz")
            status, _ = await api.call("GET", "/v1/webhooks/wh_missing")
            assert status == 404
            wrong = "wrong_" + secrets.token_urlsafe(24)
            status, _ = await api.call("GET", "/v1/webhooks", token=wrong)
            assert status == 401

            # --- the CLI, talking to the daemon with the token from the environment --------
            base = ("--config", str(config), "--url", daemon.url)
            for args in (
                ("webhooks", "list", *base),
                ("webhooks", "list", "--json", *base),
                ("webhooks", "show", wid, *base),
                ("webhooks", "show", wid, "--json", *base),
                ("deliveries", *base),
                ("deliveries", "--json", *base),
                ("attempts", wid, event_id, *base),
                ("status", *base),
                ("status", "--json", *base),
                ("test", wid, *base),
            ):
                done = await asyncio.to_thread(run_cli, *args, env=env)
                assert done.returncode == 0, (args, done.stdout, done.stderr)
                cli_outputs.append((" ".join(args[:2]), done.stdout + done.stderr))

        assert await asyncio.to_thread(daemon.stop) == 0

    # --- check-config, with the token in the environment, good and bad config ------------
    checked = await asyncio.to_thread(run_cli, "check-config", "--config", str(config), env=env)
    assert checked.returncode == 0, checked.stderr
    resolved = json.loads(checked.stdout)
    assert resolved["admin"]["token"] == "**********"
    cli_outputs.append(("check-config", checked.stdout + checked.stderr))
    broken = tmp_path / "broken.toml"
    broken.write_text(to_toml({**sections, "delivery": {**sections["delivery"], "workers": 0}}))
    failed = await asyncio.to_thread(run_cli, "check-config", "--config", str(broken), env=env)
    assert failed.returncode == 2, failed.stdout
    assert "delivery.workers" in failed.stderr
    cli_outputs.append(("check-config (broken)", failed.stdout + failed.stderr))

    # --- the search ------------------------------------------------------------------------
    printed = log_path.read_text(errors="replace")
    lines = [json.loads(line) for line in printed.splitlines() if line.startswith("{")]
    assert any(line.get("event") == "attempt" for line in lines)  # debug output was captured
    assert any(line.get("status_code") == 500 for line in lines)
    forbidden = {
        "admin token": [admin_token],
        "token file's token": [TOKEN],
        "wrong token a client sent": [wrong],
        "generated secret": needles(first),
        "rotated secret": needles(rotated),
        "supplied secret": needles(supplied),
    }
    places = [("daemon output", printed)]
    places += [(f"API {what} -> {status}", text) for what, status, text in api.answers]
    places += [(f"CLI {what}", text) for what, text in cli_outputs]
    assert len(api.answers) >= 15 and len(cli_outputs) == 12
    leaks = [
        f"{name} in {where}"
        for where, text in places
        for name, forms in forbidden.items()
        if any(form in text for form in forms)
    ]
    assert leaks == []


# -- malformed requests carrying the token -------------------------------------------------


def raw_exchange(host: str, port: int, raw: bytes) -> bytes:
    """Send raw bytes (a client library would refuse to), read until the daemon closes."""
    with socket.create_connection((host, port), timeout=DEADLINE) as sock:
        sock.sendall(raw)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def malformed_requests(token: bytes) -> dict[str, bytes]:
    auth = b"Authorization: Bearer " + token
    get = b"GET /v1/status HTTP/1.1\r\nHost: webhookd\r\n"
    return {
        "bare LF ending the Authorization line": get + auth + b"\nX-After: 1\r\n\r\n",
        "bare LF in a later header": get + auth + b"\r\nX-A: b\nX-C: d\r\n\r\n",
        "control character after the token": get + auth + b"\x01\r\n\r\n",
        "NUL after the token": get + auth + b"\x00x\r\n\r\n",
        "space before the colon": get + b"Authorization : Bearer " + token + b"\r\n\r\n",
        "header line too long": get + auth + b"x" * 10_000 + b"\r\n\r\n",
        "request line too long": b"GET /v1/status?t="
        + token
        + b"x" * 10_000
        + b" HTTP/1.1\r\n\r\n",
        "token in the request line": b"GET /" + token + b"\x7f HTTP/1.1\r\n" + auth + b"\r\n\r\n",
        "bad chunked body": (
            b"POST /v1/events HTTP/1.1\r\nHost: webhookd\r\n"
            + auth
            + b"\r\nTransfer-Encoding: chunked\r\n\r\nzz"
            + token
            + b"\r\n"
        ),
        "two Content-Lengths": (
            b"POST /v1/events HTTP/1.1\r\nHost: webhookd\r\n"
            + auth
            + b"\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}"
        ),
    }


async def test_malformed_requests_never_echo_or_log_the_token(
    tmp_path: Path, daemon_process: list[DaemonProcess]
) -> None:
    """aiohttp answered a header block broken after `Authorization` with the raw lines,
    token included, and printed them with a traceback to stderr."""
    admin_token = "adm_" + secrets.token_urlsafe(32)
    wrong = "wrong_" + secrets.token_urlsafe(24)
    sections = config_sections(tmp_path, logging={"format": "json", "level": "debug"})
    config = tmp_path / "webhookd.toml"
    config.write_text(to_toml(sections))
    log_path = tmp_path / "daemon.log"
    daemon = DaemonProcess(config, log_path, env={"WEBHOOKD_ADMIN__TOKEN": admin_token})
    daemon_process.append(daemon)
    await asyncio.to_thread(daemon.start)
    host, _, port = daemon.url.removeprefix("http://").rpartition(":")
    answers: list[tuple[str, bytes]] = []
    for token in (admin_token, wrong):
        for name, raw in malformed_requests(token.encode()).items():
            assert token.encode() in raw  # the positive control: the token is sent
            answer = await asyncio.to_thread(raw_exchange, host, int(port), raw)
            answers.append((name, answer))
            status = int(answer.split(b" ", 2)[1])
            assert 400 <= status < 500, (name, answer)
            error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
            assert set(error) == {"code", "message"}, (name, answer)
    async with Transcript(daemon.url, admin_token) as api:
        await api.ok("GET", "/readyz")  # still serving
    assert await asyncio.to_thread(daemon.stop) == 0

    printed = log_path.read_text(errors="replace")
    assert any('"refused a malformed HTTP request"' in line for line in printed.splitlines())
    raw_lines = [line for line in printed.splitlines() if not line.startswith("{")]
    assert raw_lines == []  # stderr too: nothing bypassed the JSON logs
    assert "Traceback" not in printed
    leaks = [
        f"{what} in {where}"
        for what, token in (("admin token", admin_token), ("wrong token", wrong))
        for where, text in [("daemon output", printed.encode()), *answers]
        if token.encode() in text
    ]
    assert leaks == []
