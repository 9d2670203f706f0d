"""End to end in one process: real DuckDB file, real daemon, real receivers on 127.0.0.1."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from standardwebhooks.webhooks import Webhook

from tests.conftest import Api, make_settings, running
from tests.receivers import Recorder, Reply, unused_port


async def test_every_delivery_verifies_with_standardwebhooks(tmp_path: Path) -> None:
    async with Recorder(status=204) as rx, running(make_settings(tmp_path)) as d, Api(d.url) as api:
        hooks = [await api.create_webhook(rx.url_for(f"/h{i}")) for i in range(3)]
        ids = await api.emit([{"type": "invoice.paid", "data": {"n": i}} for i in range(20)])
        requests = await rx.wait_for_requests(60)
        await api.wait_status({"delivered": 60})
    secrets = {f"/h{i}": h["secret"] for i, h in enumerate(hooks)}
    seen = set()
    for req in requests:
        payload = Webhook(secrets[req.path]).verify(req.body, dict(req.headers))
        assert req.headers["webhook-id"] == payload["id"]
        assert req.headers["content-type"] == "application/json"
        assert req.headers["user-agent"].startswith("webhookd/")
        assert set(payload) == {"id", "type", "timestamp", "data"}
        # canonical: sorted keys, no insignificant white space
        assert req.body == json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        seen.add((req.path, payload["id"]))
    assert seen == {(f"/h{i}", e) for i in range(3) for e in ids}


async def test_body_is_byte_identical_on_every_retry(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, delivery={"max_attempts": 5})
    async with Recorder(status=500) as rx, running(settings) as d, Api(d.url) as api:
        await api.create_webhook(rx.url)
        (event_id,) = await api.emit({"type": "t", "data": {"é": [1, 2.5, None]}})
        await rx.wait_for_requests(3)
        rx.reply = Reply(status=200)
        requests = await rx.wait_for_requests(4)
        (row,) = await api.wait_status({"delivered": 1})
    assert row["attempts"] == 4
    assert len({r.body for r in requests}) == 1
    assert {r.headers["webhook-id"] for r in requests} == {event_id}


async def test_deliveries_verify_with_both_secrets_during_rotation(tmp_path: Path) -> None:
    async with Recorder(status=204) as rx, running(make_settings(tmp_path)) as d, Api(d.url) as api:
        created = await api.create_webhook(rx.url)
        old = created["secret"]
        rotated = await api.ok("POST", f"/v1/webhooks/{created['webhook_id']}/rotate-secret")
        new = rotated["secret"]
        assert new != old and rotated["previous_secret_expires_at"] is not None
        await api.emit({"type": "t", "data": {}})
        (req,) = await rx.wait_for_requests(1)
    Webhook(old).verify(req.body, dict(req.headers))
    Webhook(new).verify(req.body, dict(req.headers))


async def test_failed_until_dead_then_redriven_end_to_end(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, delivery={"max_attempts": 2})
    async with Recorder(status=503) as rx, running(settings) as d, Api(d.url) as api:
        hook = await api.create_webhook(rx.url)
        (event_id,) = await api.emit({"type": "t", "data": {}})
        (row,) = await api.wait_status({"dead": 1})
        assert (row["attempts"], row["last_status_code"]) == (2, 503)
        rx.reply = Reply(status=204)
        result = await api.ok("POST", "/v1/redrive", {"status": "dead"})
        assert result == {"count": 1}
        (row,) = await api.wait_status({"delivered": 1})
        attempts = await api.ok("GET", f"/v1/deliveries/{hook['webhook_id']}/{event_id}/attempts")
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in attempts["items"]] == [
        (1, 503, "retry"),
        (2, 503, "dead"),
        (3, 204, "delivered"),
    ]


async def test_gone_parks_and_deactivates_until_enabled(tmp_path: Path) -> None:
    async with Recorder(status=410) as rx, running(make_settings(tmp_path)) as d, Api(d.url) as api:
        hook = await api.create_webhook(rx.url)
        wid = hook["webhook_id"]
        await api.emit({"type": "t", "data": {}})
        await api.wait_status({"parked": 1})
        shown = await api.ok("GET", f"/v1/webhooks/{wid}")
        assert shown["active"] is False and "410" in shown["disabled_reason"]
        rx.reply = Reply(status=204)
        await api.ok("PATCH", f"/v1/webhooks/{wid}", {"active": True})
        await api.wait_status({"delivered": 1})
    assert len(rx.requests) == 2


async def test_redirects_are_not_followed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, delivery={"max_attempts": 1})
    async with Recorder(status=302) as rx, running(settings) as d, Api(d.url) as api:
        rx.reply = Reply(status=302, headers={"Location": rx.url_for("/elsewhere")})
        await api.create_webhook(rx.url_for("/hook"))
        await api.emit({"type": "t", "data": {}})
        (row,) = await api.wait_status({"dead": 1})
    assert row["last_status_code"] == 302
    assert "redirect not followed" in row["last_error"]
    assert rx.paths() == ["/hook"]


async def test_retry_after_pushes_the_next_attempt(tmp_path: Path) -> None:
    async with (
        Recorder(status=429, headers={"Retry-After": "3600"}) as rx,
        running(make_settings(tmp_path)) as d,
        Api(d.url) as api,
    ):
        await api.create_webhook(rx.url)
        await api.emit({"type": "t", "data": {}})
        await rx.wait_for_requests(1)
        (row,) = await api.wait_status({"pending": 1})
    due = datetime.fromisoformat(row["next_attempt_at"].replace("Z", "+00:00"))
    wait = (due - datetime.now(UTC)).total_seconds()
    assert 3000 < wait <= 3600


async def test_connection_refused_is_retried_with_a_clear_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, delivery={"retry_schedule": ["1h"]})
    async with running(settings) as d, Api(d.url) as api:
        await api.create_webhook(f"http://127.0.0.1:{unused_port()}/h")
        await api.emit({"type": "t", "data": {}})
        (row,) = await api.wait_status({"pending": 1})
        while row["attempts"] == 0:
            (row,) = await api.wait_status({"pending": 1})
    assert row["last_status_code"] is None
    assert "connection refused" in row["last_error"]


async def test_guard_refuses_loopback_and_the_receiver_sees_nothing(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, delivery={"allow_private_destinations": False, "max_attempts": 1}
    )
    async with Recorder(status=204) as rx, running(settings) as d, Api(d.url) as api:
        status, body = await api.request("POST", "/v1/webhooks", {"url": rx.url})
        assert status == 400 and body["error"]["code"] == "invalid_url"
        # a name that resolves to loopback passes validation but is refused at connect time
        await api.create_webhook(rx.url_for("/h", host="localhost"))
        await api.emit({"type": "t", "data": {}})
        (row,) = await api.wait_status({"dead": 1})
    assert "destination refused" in row["last_error"]
    assert rx.requests == []


async def test_deliveries_survive_a_fresh_daemon_instance(tmp_path: Path) -> None:
    port = unused_port()
    settings = make_settings(tmp_path, delivery={"retry_schedule": ["1s"]})
    async with running(settings) as d, Api(d.url) as api:
        await api.create_webhook(f"http://127.0.0.1:{port}/h")
        ids = await api.emit([{"type": "t", "data": {"n": i}} for i in range(5)])
        items = await api.wait_status({"pending": 5})
        while any(i["attempts"] == 0 for i in items):
            items = await api.wait_status({"pending": 5})
    # The receiver comes up on that port; a new daemon on the same file delivers them.
    async with Recorder(status=204, port=port) as rx, running(settings) as d, Api(d.url) as api:
        await api.wait_status({"delivered": 5})
    assert sorted(r.headers["webhook-id"] for r in rx.requests) == sorted(ids)
