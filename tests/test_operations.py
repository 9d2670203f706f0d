"""Operating the daemon: sd_notify, /readyz at start-up, metrics, auto-disable, rotation
grace, retention."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.conftest import Api, DaemonProcess, make_settings, running, write_config
from tests.receivers import Recorder, Reply
from webhookd.signing import new_secret
from webhookd.store.base import WebhookPatch
from webhookd.store.duckdb.store import DuckDBStore
from webhookd.store.records import utcnow


def _recv_until(sock: socket.socket, wanted: str, deadline: float) -> list[str]:
    got: list[str] = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if any(wanted in m.split("\n") for m in got):
            return got
    raise AssertionError(f"no {wanted} among {got}")


async def test_sd_notify_ready_watchdog_stopping(tmp_path: Path, daemon_process: list[Any]) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    proc = DaemonProcess(
        write_config(tmp_path),
        tmp_path / "daemon.log",
        env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"},
    )
    daemon_process.append(proc)
    try:
        proc.start()
        ready = await asyncio.to_thread(_recv_until, sock, "READY=1", 10)
        assert any(m.startswith("READY=1") for m in ready)
        await asyncio.to_thread(_recv_until, sock, "WATCHDOG=1", 10)
        await asyncio.to_thread(_recv_until, sock, "WATCHDOG=1", 10)  # and again
        proc.signal(signal.SIGTERM)
        stopping = await asyncio.to_thread(_recv_until, sock, "STOPPING=1", 10)
        assert any(m.startswith("STOPPING=1") for m in stopping)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        sock.close()


def database_process(daemon_pid: int, deadline: float = 10.0) -> int:
    """The pid of the daemon's database child (`python -m webhookd.store.duckdb.server`)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == daemon_pid and b"webhookd.store.duckdb.server" in cmdline:
                return int(entry.name)
        time.sleep(0.01)
    raise AssertionError(f"no database process under pid {daemon_pid}")


def _silence(sock: socket.socket, quiet: float, deadline: float) -> list[str]:
    """Read datagrams until none arrives for `quiet` seconds; what arrived meanwhile."""
    got: list[str] = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        sock.settimeout(quiet)
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            return got
    raise AssertionError(f"the notify socket never fell silent for {quiet}s: {got[-5:]}")


async def test_watchdog_pings_stop_while_the_database_process_does_not_answer(
    tmp_path: Path, daemon_process: list[Any]
) -> None:
    """The database process stops answering (SIGSTOP): once a call has waited
    `database.stall_timeout`, the daemon is unhealthy and withholds WATCHDOG=1, so that
    systemd restarts it. SIGCONT: the calls are answered, and the pings come back."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    proc = DaemonProcess(
        write_config(tmp_path, database={"stall_timeout": "1s"}),
        tmp_path / "daemon.log",
        # A ping every 100 ms while healthy.
        env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"},
    )
    daemon_process.append(proc)
    child: int | None = None
    try:
        proc.start()
        assert proc.proc is not None
        await asyncio.to_thread(_recv_until, sock, "WATCHDOG=1", 10)
        child = database_process(proc.proc.pid)
        os.kill(child, signal.SIGSTOP)
        # The scanner always has a call out to the database process; pings go on until it
        # has waited a second, then stop. Ten ping intervals without one: they stopped (a
        # health check that ignored the database would ping on through them).
        await asyncio.to_thread(_silence, sock, 1.0, 30)
        assert proc.proc.poll() is None  # stuck is not dead: systemd's call, not ours
        os.kill(child, signal.SIGCONT)
        await asyncio.to_thread(_recv_until, sock, "WATCHDOG=1", 10)
        await asyncio.to_thread(_recv_until, sock, "WATCHDOG=1", 10)  # and on
        proc.signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGCONT)
        sock.close()


ORPHANS = 20_000  # inflight rows a killed daemon left: their rescue takes a second or more


async def leave_orphans(path: Path, count: int) -> str:
    """A database file as a daemon killed mid-delivery leaves it: `count` rows inflight
    under a lease of an hour, of a webhook deactivated meanwhile (rescued, they are
    parked, where no worker claims them again). Returns the webhook's id."""
    store = DuckDBStore(path)
    await store.open()
    try:
        created = await store.create_webhook("http://127.0.0.1:9/", [], new_secret(), "")
        webhook_id = created.webhook_id
        await store.update_webhook(webhook_id, WebhookPatch(active=False))
    finally:
        await store.close()
    con = duckdb.connect(str(path))
    try:
        con.execute(
            "INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts, "
            "retry_base, next_attempt_at, lease_until, body, created_at, updated_at) "
            "SELECT ?, 'evt-' || i, 'inflight', 0, 0, ?, ?, '{}'::BLOB, ?, ? FROM range(?) t(i)",
            [webhook_id, utcnow(), utcnow() + timedelta(hours=1), utcnow(), utcnow(), count],
        )
    finally:
        con.close()
    return webhook_id


async def test_nothing_is_served_before_the_start_up_rescue_is_done(
    tmp_path: Path, daemon_process: list[Any]
) -> None:
    """From the moment the daemon listens until the start-up rescue of what a killed
    daemon left in flight is done, /readyz answers 503 and every other route but /healthz
    503 "starting"; from the first 200 of /readyz on, none of those rows is inflight.
    The rescue is held for real: thousands of rows to return to pending."""
    webhook_id = await leave_orphans(tmp_path / "webhookd.duckdb", ORPHANS)
    proc = DaemonProcess(write_config(tmp_path), tmp_path / "daemon.log")
    daemon_process.append(proc)
    starting = asyncio.ensure_future(asyncio.to_thread(proc.start, deadline=120))
    end = time.monotonic() + 30
    listening = None
    while listening is None:  # the address, from the line logged as soon as it listens
        assert time.monotonic() < end and not starting.done()
        lines = proc.lines() if proc.log_path.exists() else []
        listening = next(
            (line["listen"] for line in lines if line.get("event", "").startswith("listening")),
            None,
        )
        await asyncio.sleep(0.005)
    readyz: list[int] = []
    listed: list[tuple[int, Any]] = []
    async with Api("http://" + listening) as api:
        end = time.monotonic() + 120
        while not readyz or readyz[-1] != 200:
            assert time.monotonic() < end, (readyz[-3:], listed[-3:])
            status, body = await api.request("GET", "/readyz")
            readyz.append(status)
            if status != 200:
                assert (status, body["status"]) == (503, "not ready"), body
            assert (await api.request("GET", "/healthz"))[0] == 200
            listed.append(
                await api.request(
                    "GET", "/v1/deliveries", params={"status": "inflight", "limit": "10"}
                )
            )
        await starting
        # Answers before ready were refusals, never a look at rows still inflight.
        for status, body in listed:
            if status == 503:
                assert body["error"]["code"] == "starting", body
            else:
                assert (status, body["items"]) == (200, []), body
        # The first answers came while the daemon started (its database process alone
        # takes longer to start than the first poll does to arrive).
        assert readyz[0] == 503 and listed[0][0] == 503, (readyz[:3], listed[:3])
        parked = await api.deliveries(webhook_id=webhook_id, status="parked")
        assert len(parked) == ORPHANS
    (ready,) = [line for line in proc.lines() if line.get("event") == "webhookd ready"]
    assert ready["rescued"] == ORPHANS
    assert proc.stop() == 0


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_move_as_deliveries_happen(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, delivery={"retry_schedule": ["1h"]})
    async with (
        Recorder(status=204) as ok,
        Recorder(status=500) as bad,
        running(settings) as d,
        Api(d.url) as api,
    ):
        status, _ = await api.request("GET", "/metrics", token="wrong")
        assert status == 401
        before = _samples(await api.ok("GET", "/metrics"))
        assert (
            _value(before, "webhookd_attempts_total", outcome="delivered", status_class="2xx") == 0
        )
        await api.create_webhook(ok.url, event_types=["good"])
        await api.create_webhook(bad.url, event_types=["bad"])
        await api.emit([{"type": "good", "data": {"i": i}} for i in range(3)])
        await api.emit({"type": "bad", "data": {}})
        end = time.monotonic() + 15
        while True:
            after = _samples(await api.ok("GET", "/metrics"))
            done = _value(after, "webhookd_attempts_total", outcome="delivered", status_class="2xx")
            retried = _value(after, "webhookd_attempts_total", outcome="retry", status_class="5xx")
            depth = (
                _value(after, "webhookd_queue_depth", status="delivered"),
                _value(after, "webhookd_queue_depth", status="pending"),
            )
            if (done, retried, *depth) == (3, 1, 3, 1) or time.monotonic() > end:
                break
            await asyncio.sleep(0.02)
    assert (done, retried) == (3, 1)
    assert _value(after, "webhookd_attempt_duration_seconds_count") == 4
    assert _value(after, "webhookd_events_ingested_total") == 4
    assert _value(after, "webhookd_queue_depth", status="delivered") == 3
    assert _value(after, "webhookd_queue_depth", status="pending") == 1
    assert _value(after, "webhookd_scanner_lag_events") == 0
    assert "webhookd_dead_total" in {name for name, _ in after}


async def test_auto_disable_parks_and_enable_redrives(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        delivery={"disable_after": "1s", "retry_schedule": ["100ms"], "max_attempts": 1000},
    )
    async with Recorder(status=500) as rx, running(settings) as d, Api(d.url) as api:
        hook = await api.create_webhook(rx.url)
        wid = hook["webhook_id"]
        await api.emit({"type": "t", "data": {}})
        end = time.monotonic() + 20
        while (await api.ok("GET", f"/v1/webhooks/{wid}"))["active"]:
            assert time.monotonic() < end, "never auto-disabled"
            await asyncio.sleep(0.05)
        await api.wait_status({"parked": 1})
        status = await api.ok("GET", "/v1/status")
        assert "every attempt failed" in status["disabled_webhooks"][wid]
        samples = _samples(await api.ok("GET", "/metrics"))
        assert _value(samples, "webhookd_webhooks_auto_disabled_total") == 1
        assert _value(samples, "webhookd_webhooks_disabled") == 1
        rx.reply = Reply(status=204)
        await api.ok("PATCH", f"/v1/webhooks/{wid}", {"active": True})
        await api.wait_status({"delivered": 1})
        assert (await api.ok("GET", f"/v1/webhooks/{wid}"))["disabled_reason"] is None


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_old_secret_stops_signing_after_the_grace_period(tmp_path: Path) -> None:
    """Both secrets sign during the grace that follows a rotation; the old one no longer
    does once it has passed. The grace is an hour: the first delivery is inside it however
    slow the machine; its end is brought forward in the file while the daemon is stopped,
    as if the hour had passed."""
    settings = make_settings(tmp_path, delivery={"rotation_grace": "1h"})
    async with Recorder(status=204) as rx:
        async with running(settings) as d, Api(d.url) as api:
            hook = await api.create_webhook(rx.url)
            wid, old = hook["webhook_id"], hook["secret"]
            before = datetime.now(UTC)
            new = (await api.ok("POST", f"/v1/webhooks/{wid}/rotate-secret"))["secret"]
            after = datetime.now(UTC)
            expires = _instant(
                (await api.ok("GET", f"/v1/webhooks/{wid}"))["previous_secret_expires_at"]
            )
            assert before + timedelta(hours=1) <= expires <= after + timedelta(hours=1)
            await api.emit({"type": "t", "data": {"n": 1}})
            (during,) = await rx.wait_for_requests(1)
        con = duckdb.connect(str(settings.database.path))
        try:
            con.execute(
                "UPDATE webhooks SET previous_secret_expires_at = ? WHERE webhook_id = ?",
                [utcnow() - timedelta(seconds=1), wid],
            )
        finally:
            con.close()
        async with running(settings) as d, Api(d.url) as api:
            assert (await api.ok("GET", f"/v1/webhooks/{wid}"))[
                "previous_secret_expires_at"
            ] is None
            await api.emit({"type": "t", "data": {"n": 2}})
            after_grace = (await rx.wait_for_requests(2))[1]
    assert len(during.headers["webhook-signature"].split()) == 2
    Webhook(old).verify(during.body, dict(during.headers))
    Webhook(new).verify(during.body, dict(during.headers))
    assert len(after_grace.headers["webhook-signature"].split()) == 1
    Webhook(new).verify(after_grace.body, dict(after_grace.headers))
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after_grace.body, dict(after_grace.headers))


async def test_retention_prunes_delivered_rows_but_not_pending_or_dead(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        retention={"delivered_ttl": "100ms", "prune_interval": "200ms", "log_ttl": "1d"},
        delivery={"retry_schedule": ["100ms", "1h"], "max_attempts": 2},
    )
    async with (
        Recorder(status=204) as ok,
        Recorder(status=500) as dead,
        Recorder(status=429, headers={"Retry-After": "3600"}) as later,
        running(settings) as d,
        Api(d.url) as api,
    ):
        good = await api.create_webhook(ok.url, event_types=["good"])
        await api.create_webhook(dead.url, event_types=["dead"])
        await api.create_webhook(later.url, event_types=["later"])
        (good_event,) = await api.emit({"type": "good", "data": {}})
        await api.emit([{"type": "dead", "data": {}}, {"type": "later", "data": {}}])
        await ok.wait_for_requests(1)
        await dead.wait_for_requests(2)
        await later.wait_for_requests(1)
        # the delivered row is pruned; the dead and the pending rows stay
        rows = await api.wait_status({"pending": 1, "dead": 1})
        assert all(r["attempts"] >= 1 for r in rows)
        # the history of the pruned row stays in the log
        log = await api.ok("GET", f"/v1/deliveries/{good['webhook_id']}/{good_event}/attempts")
        assert [a["outcome"] for a in log["items"]] == ["delivered"]
