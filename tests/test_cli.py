"""The operator commands against a real daemon subprocess and real receivers.

The CLI runs as a subprocess (`python -m webhookd ...`) without blocking the event loop,
so the receivers keep answering while a command waits on the daemon.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import REPO, DaemonProcess, write_config
from tests.receivers import Recorder, Reply, unused_port

DEADLINE = 15.0
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKD_")}


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self
        return json.loads(self.out)


@dataclass(frozen=True)
class Cli:
    """`webhookd` with a config and, when given, an address override."""

    config: Path
    url: str | None = None

    async def __call__(self, *args: str) -> Ran:
        target = ["--config", str(self.config)] + (["--url", self.url] if self.url else [])
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "webhookd",
            *args,
            *target,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=CLEAN_ENV,
            cwd=REPO,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        ran = Ran(proc.returncode, out.decode(), err.decode())
        assert "Traceback" not in ran.err, ran
        return ran

    async def ok(self, *args: str) -> Ran:
        ran = await self(*args)
        assert ran.code == 0, ran
        return ran

    async def json(self, *args: str) -> Any:
        return (await self(*args, "--json")).json()


StartDaemon = Callable[..., Cli]


@pytest.fixture
def start_daemon(tmp_path: Path, daemon_process: list[DaemonProcess]) -> StartDaemon:
    """One daemon per test, with config overrides; killed at teardown."""

    def start(**overrides: Mapping[str, Any]) -> Cli:
        config = write_config(tmp_path, **overrides)
        proc = DaemonProcess(config, tmp_path / "daemon.log", env=CLEAN_ENV)
        daemon_process.append(proc)
        proc.start()
        return Cli(config, proc.url)

    return start


async def eventually(
    probe: Callable[[], Awaitable[Any]], accept: Callable[[Any], bool], what: str
) -> Any:
    """Poll `probe` until `accept` holds, failing after DEADLINE seconds."""
    end = time.monotonic() + DEADLINE
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what}: still {value!r} after {DEADLINE}s")
        await asyncio.sleep(0.05)


async def wait_delivery(cli: Cli, event_id: str, **expected: Any) -> dict[str, Any]:
    """The one queue row of `event_id`, once its fields are as expected."""

    async def probe() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await cli.json("deliveries", "--event", event_id))["items"]
        return items

    def accept(items: list[dict[str, Any]]) -> bool:
        return len(items) == 1 and all(items[0][k] == v for k, v in expected.items())

    rows = await eventually(probe, accept, f"delivery of {event_id}")
    row: dict[str, Any] = rows[0]
    return row


def table(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def fields(text: str) -> dict[str, str]:
    pairs = (line.partition(":") for line in text.splitlines() if ":" in line)
    return {key: value.strip() for key, _, value in pairs}


async def add_webhook(cli: Cli, url: str, *extra: str) -> dict[str, Any]:
    created: dict[str, Any] = await cli.json("webhooks", "add", url, *extra)
    return created


async def emit(cli: Cli, event_type: str = "order.created", data: str = '{"n": 1}') -> str:
    ran = await cli.ok("events", "emit", "--type", event_type, "--data", data)
    return ran.out.strip()


# --- webhooks ----------------------------------------------------------------------------


async def test_webhooks_commands_human_and_json(start_daemon: StartDaemon) -> None:
    cli = start_daemon()
    added = await cli.ok(
        "webhooks",
        "add",
        "http://127.0.0.1:9/hook",
        "--event-type",
        "order.created",
        "--event-type",
        "order.paid",
        "--description",
        "orders",
    )
    shown = fields(added.out)
    wid = shown["webhook_id"]
    assert shown["url"] == "http://127.0.0.1:9/hook"
    assert shown["event_types"] == "order.created,order.paid"
    assert shown["active"] == "yes"
    assert shown["secret"].startswith("whsec_")
    assert "not shown again" in added.err

    given = await add_webhook(cli, "http://127.0.0.1:9/other", "--secret", shown["secret"])
    assert given["secret"] == shown["secret"] and given["event_types"] == []

    listing = await cli.ok("webhooks", "list")
    rows = table(listing.out)
    assert rows[0] == [
        "webhook_id", "url", "tenant", "active", "event_types", "ordering", "rate_limit",
        "max_in_flight"
    ]  # fmt: skip
    assert [r[4] for r in rows[1:] if r[0] == given["webhook_id"]] == ["*"]
    hook_row = [wid, "http://127.0.0.1:9/hook", "-", "yes", "order.created,order.paid"]
    assert [*hook_row, "none", "-", "-"] in rows
    assert "whsec_" not in listing.out
    as_json = await cli.json("webhooks", "list")
    assert {w["webhook_id"] for w in as_json["items"]} == {wid, given["webhook_id"]}
    assert as_json["next"] is None and "whsec_" not in json.dumps(as_json)
    paged = await cli("webhooks", "list", "--limit", "1")
    assert len(table(paged.out)) == 2 and "--cursor" in paged.err

    show = await cli.ok("webhooks", "show", wid)
    assert fields(show.out)["description"] == "orders" and "secret" not in fields(show.out)
    assert (await cli.json("webhooks", "show", wid))["webhook_id"] == wid

    assert fields((await cli.ok("webhooks", "disable", wid)).out)["active"] == "no"
    assert (await cli.json("webhooks", "enable", wid))["active"] is True
    assert (await cli.json("webhooks", "disable", wid))["active"] is False
    assert fields((await cli.ok("webhooks", "enable", wid)).out)["active"] == "yes"

    rotated = await cli.ok("webhooks", "rotate-secret", wid)
    new_secret = fields(rotated.out)["secret"]
    assert new_secret.startswith("whsec_") and new_secret != shown["secret"]
    assert fields(rotated.out)["previous_secret_expires_at"] != "-"
    again = await cli.json("webhooks", "rotate-secret", wid)
    assert again["secret"] not in (new_secret, shown["secret"])

    assert (await cli.ok("webhooks", "remove", wid)).out == f"removed {wid}\n"
    removed_json = await cli("webhooks", "remove", given["webhook_id"], "--json")
    assert (removed_json.code, removed_json.out) == (0, "")
    missing = await cli("webhooks", "show", wid)
    assert missing.code == 1 and missing.out == ""
    assert missing.err.startswith("webhookd: the daemon answered 404 (not_found): ")
    assert len(missing.err.splitlines()) == 1
    assert (await cli.json("webhooks", "list"))["items"] == []


# An OSC retitling the terminal, a CSI clearing it, DEL, a C1 CSI, a right-to-left override.
NASTY = "x\x1b]0;owned\x07\x1b[2J\x7f\x9b31m\u202egnp.exe"
ESCAPED = "x\\x1b]0;owned\\x07\\x1b[2J\\x7f\\x9b31m\\u202egnp.exe"
UNSAFE = ("\x1b", "\x07", "\x7f", "\x9b", "\u202e")


async def test_stored_strings_are_escaped_for_humans_and_exact_in_json(
    start_daemon: StartDaemon,
) -> None:
    cli = start_daemon()
    created = await add_webhook(
        cli, "http://127.0.0.1:9/hook", "--event-type", NASTY, "--description", NASTY
    )
    assert created["event_types"] == [NASTY] and created["description"] == NASTY
    wid = created["webhook_id"]
    human = [
        await cli.ok("webhooks", "list"),
        await cli.ok("webhooks", "show", wid),
        await cli.ok("webhooks", "disable", wid),
    ]
    for ran in human:
        assert not any(char in ran.out + ran.err for char in UNSAFE), ran
    assert ESCAPED in table(human[0].out)[1][4]
    assert fields(human[1].out)["description"] == ESCAPED
    assert fields(human[1].out)["event_types"] == ESCAPED
    exact = await cli.json("webhooks", "list")
    assert exact["items"][0]["event_types"] == [NASTY]
    assert (await cli.json("webhooks", "show", wid))["description"] == NASTY


async def test_webhooks_add_and_set_what_a_receivers_network_requires(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    ca = trustme.CA()
    client = ca.issue_cert("webhookd@example.com")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.crt"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    pair = {"cert_file": str(tmp_path / "client.crt"), "key_file": str(tmp_path / "client.key")}
    cli = start_daemon(tls={"client_certificates": {"partner": pair}})
    added = await cli.ok(
        "webhooks",
        "add",
        "https://127.0.0.1:9/hook",
        "--header",
        "X-Api-Key=k-secret-1",
        "--signing",
        "v1a",
        "--client-certificate",
        "partner",
        "--timeout",
        "2500ms",
    )
    shown = fields(added.out)
    assert shown["headers"] == '{"X-Api-Key":"k-secret-1"}'  # shown once, on creation
    assert (shown["signing"], shown["client_certificate"], shown["timeout"]) == (
        "v1a",
        "partner",
        "2.5",
    )
    assert shown["public_key"].startswith("whpk_") and shown["secret"] == "-"
    assert "receivers verify with public_key" in added.err
    wid = shown["webhook_id"]
    for ran in (await cli.ok("webhooks", "show", wid), await cli.ok("webhooks", "list")):
        assert "k-secret-1" not in ran.out
    assert fields((await cli.ok("webhooks", "show", wid)).out)["headers"] == (
        '{"X-Api-Key":"**********"}'
    )
    changed = await cli.json("webhooks", "set", wid, "--no-headers", "--timeout", "none")
    assert (changed["headers"], changed["timeout"]) == ({}, None)
    assert changed["client_certificate"] == "partner"
    refused = await cli("webhooks", "set", wid, "--client-certificate", "other")
    assert refused.code == 1 and "client_certificate: not a client certificate" in refused.err


async def test_webhooks_add_refused_by_the_api(start_daemon: StartDaemon) -> None:
    cli = start_daemon()
    ran = await cli("webhooks", "add", "ftp://127.0.0.1/x")
    assert ran.code == 1 and ran.err.startswith("webhookd: the daemon answered 400 (invalid_url)")


async def test_test_command(start_daemon: StartDaemon) -> None:
    cli = start_daemon()
    async with Recorder(status=204) as good, Recorder(status=500) as bad:
        ok_hook = await add_webhook(cli, good.url + "/ok")
        bad_hook = await add_webhook(cli, bad.url + "/bad")

        ran = await cli.ok("test", ok_hook["webhook_id"])
        shown = fields(ran.out)
        assert shown["delivered"] == "yes" and shown["status_code"] == "204"
        assert ["attempt", "status_code", "duration_ms", "error"] in table(ran.out)
        assert (await cli.json("test", ok_hook["webhook_id"]))["delivered"] is True
        assert good.paths() == ["/ok", "/ok"]

        failed = await cli("test", bad_hook["webhook_id"], "--json")
        assert failed.code == 1
        result = json.loads(failed.out)
        assert result["delivered"] is False and result["status_code"] == 500
        assert len(result["attempts"]) == len(bad.requests)

    unknown = await cli("test", "wh_nope")
    assert unknown.code == 1 and "404" in unknown.err


# --- events, deliveries, attempts, status ------------------------------------------------


async def test_emit_deliveries_attempts_status(start_daemon: StartDaemon) -> None:
    cli = start_daemon()
    async with Recorder(status=204) as receiver:
        wid = (await add_webhook(cli, receiver.url + "/in"))["webhook_id"]
        first = await emit(cli)
        assert first.startswith("evt_")
        emitted = await cli.json(
            "events", "emit", "--type", "order.paid", "--data", '{"n": 2}', "--id", "evt_mine"
        )
        assert emitted == {"ids": ["evt_mine"]}

        row = await wait_delivery(cli, first, status="delivered")
        assert (row["webhook_id"], row["attempts"], row["last_status_code"]) == (wid, 1, 204)
        await wait_delivery(cli, "evt_mine", status="delivered")
        await receiver.wait_for_requests(2)

    listing = await cli.ok("deliveries", "--webhook", wid)
    rows = table(listing.out)
    assert rows[0] == [
        "webhook_id",
        "event_id",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "last_error",
    ]
    assert sorted(r[1] for r in rows[1:]) == sorted([first, "evt_mine"])
    assert {tuple(r[2:5]) for r in rows[1:]} == {("delivered", "1", "204")}
    assert (await cli.json("deliveries", "--status", "dead"))["items"] == []
    assert (await cli.ok("deliveries", "--status", "pending")).out == "(none)\n"
    assert len((await cli.json("deliveries", "--limit", "1"))["items"]) == 1

    log = await cli.ok("attempts", wid, first)
    lines = table(log.out)
    assert lines[0] == ["attempt", "attempted_at", "outcome", "status_code", "duration_ms", "error"]
    assert lines[1][0] == "1" and lines[1][3] == "204"
    attempts = (await cli.json("attempts", wid, first))["items"]
    assert [(a["attempt"], a["status_code"]) for a in attempts] == [(1, 204)]

    report = await cli.json("status")
    assert report["by_status"]["delivered"] == 2
    assert report["by_webhook"] == {wid: {"delivered": 2}}
    human = await cli.ok("status")
    assert fields(human.out)["delivered"] == "2"
    assert [wid, "0", "0", "2", "0", "0"] in table(human.out)


async def test_emit_data_from_a_file(start_daemon: StartDaemon, tmp_path: Path) -> None:
    cli = start_daemon()
    payload = tmp_path / "event.json"
    payload.write_text('{"order": 7}')
    ran = await cli.ok("events", "emit", "--type", "t", "--data", f"@{payload}", "--id", "evt_f")
    assert ran.out == "evt_f\n"
    conflict = await cli("events", "emit", "--type", "t", "--data", "{}", "--id", "evt_f")
    assert conflict.code == 1 and "409" in conflict.err


# --- disable / enable, redrive, replay ---------------------------------------------------


async def test_disable_parks_and_enable_resumes(start_daemon: StartDaemon) -> None:
    cli = start_daemon(delivery={"retry_schedule": ["1h"]})
    async with Recorder(status=500) as receiver:
        wid = (await add_webhook(cli, receiver.url))["webhook_id"]
        event = await emit(cli)
        await wait_delivery(cli, event, status="pending", attempts=1, last_status_code=500)

        await cli.ok("webhooks", "disable", wid)
        await wait_delivery(cli, event, status="parked")
        assert len(receiver.requests) == 1
        await cli.ok("webhooks", "enable", wid)
        # Enabled again, the parked row is due at once: a second attempt, then a retry later.
        await receiver.wait_for_requests(2, deadline=DEADLINE)
        await wait_delivery(cli, event, status="pending", attempts=2)


async def test_redrive_dead_rows(start_daemon: StartDaemon) -> None:
    cli = start_daemon(delivery={"max_attempts": 1})
    async with Recorder(status=500) as receiver:
        wid = (await add_webhook(cli, receiver.url))["webhook_id"]
        event = await emit(cli)
        await wait_delivery(cli, event, status="dead", attempts=1)
        assert (await cli.json("redrive", "--status", "parked"))["count"] == 0

        receiver.reply = Reply(status=204)
        ran = await cli.ok("redrive", "--status", "dead", "--webhook", wid, "--since", "1h")
        assert ran.out == "1 delivery set due now\n"
        row = await wait_delivery(cli, event, status="delivered")
        assert row["last_status_code"] == 204
        assert len(receiver.requests) == 2
        assert (await cli.json("redrive", "--status", "dead")) == {"count": 0}


async def test_replay_a_delivered_event(start_daemon: StartDaemon) -> None:
    cli = start_daemon()
    async with Recorder(status=204) as receiver:
        wid = (await add_webhook(cli, receiver.url))["webhook_id"]
        event = await emit(cli)
        await wait_delivery(cli, event, status="delivered")

        assert (await cli.ok("replay", event)).out == "1 delivery queued again\n"
        await receiver.wait_for_requests(2, deadline=DEADLINE)
        await wait_delivery(cli, event, status="delivered")

        assert (await cli.json("replay", event, "--webhook", wid)) == {"count": 1}
        await receiver.wait_for_requests(3, deadline=DEADLINE)
        bodies = {r.body for r in receiver.requests}
        assert len(bodies) == 1  # the same event each time
    unknown = await cli("replay", "evt_unknown")
    assert unknown.code == 1 and "404 (not_found)" in unknown.err


# --- failures: no daemon, wrong token, usage ---------------------------------------------


async def test_daemon_down_exits_3(tmp_path: Path) -> None:
    port = unused_port()
    cli = Cli(write_config(tmp_path), f"http://127.0.0.1:{port}")
    for args in (
        ("status",),
        ("webhooks", "list", "--json"),
        ("events", "emit", "--type", "t", "--data", "1"),
    ):
        ran = await cli(*args)
        assert ran.code == 3, ran
        assert ran.out == ""
        assert ran.err == (
            f"webhookd: cannot reach the daemon at 127.0.0.1:{port} (connection refused)"
            " — is it running?\n"
        )
    sock = tmp_path / "absent.sock"
    ran = await Cli(write_config(tmp_path, admin={"listen": f"unix:{sock}"}))("status")
    assert ran.code == 3 and f"unix:{sock} (no such file or directory)" in ran.err


async def test_wrong_token_exits_1(start_daemon: StartDaemon, tmp_path: Path) -> None:
    cli = start_daemon()
    other = tmp_path / "other"
    other.mkdir()
    config = write_config(other)
    (other / "admin.token").write_text("not-the-token\n")
    ran = await Cli(config, cli.url)("webhooks", "list")
    assert ran.code == 1 and ran.out == ""
    assert ran.err == (
        "webhookd: the daemon refused the token (401): "
        "check admin.token_file / WEBHOOKD_ADMIN__TOKEN\n"
    )


async def test_usage_and_config_problems_exit_2(start_daemon: StartDaemon, tmp_path: Path) -> None:
    cli = start_daemon()
    bad_json = await cli("events", "emit", "--type", "t", "--data", "{nope")
    assert bad_json.code == 2 and "--data: not valid JSON" in bad_json.err
    assert (await cli("redrive", "--status", "pending")).code == 2
    assert (await cli("redrive", "--status", "dead", "--since", "last week")).code == 2
    assert (await cli("deliveries", "--limit", "5000")).code == 2
    assert (await cli("webhooks")).code == 2
    assert (await Cli(cli.config, "ftp://x")("status")).code == 2

    missing = await Cli(tmp_path / "absent.toml", cli.url)("status")
    assert missing.code == 2
    assert missing.err == f"webhookd: config: file '{tmp_path / 'absent.toml'}' does not exist\n"
    (tmp_path / "admin.token").unlink()
    no_token = await cli("status")
    assert no_token.code == 2 and no_token.err.startswith("webhookd: admin.token_file: ")


async def test_unix_socket_from_the_config(
    tmp_path: Path, daemon_process: list[DaemonProcess]
) -> None:
    sock = tmp_path / "admin.sock"
    if len(str(sock)) > 100:
        pytest.skip("the temporary directory is too deep for a unix socket path")
    config = write_config(tmp_path, admin={"listen": f"unix:{sock}"})
    proc = DaemonProcess(config, tmp_path / "daemon.log", env=CLEAN_ENV)
    daemon_process.append(proc)
    proc.start()
    cli = Cli(config)  # no --url: the address comes from admin.listen
    assert (await cli.json("status"))["by_status"]["pending"] == 0
    created = await add_webhook(cli, "http://127.0.0.1:9/x")
    assert created["webhook_id"] in (await cli.ok("webhooks", "list")).out
    assert (await Cli(config, f"unix:{sock}").json("webhooks", "list"))["items"]
