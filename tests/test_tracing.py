"""Traces across the hop (SPEC "Tracing"): a producer's W3C traceparent, from the ingest
request's header or an event's field (or publish() on PostgreSQL), is stored with the event;
every attempt sends one with the same trace id and a span id of its own. With
tracing.otlp_endpoint, spans of the ingest and of each attempt reach a real OTLP/HTTP
receiver on 127.0.0.1; without it, the OpenTelemetry SDK is never imported."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import TOKEN, Api, PgCluster, make_settings, running
from tests.receivers import Recorder, Reply
from tests.test_ordering_and_limits import database

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
OTHER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
DEADLINE = 30.0


def _parts(header: str) -> tuple[str, str, str, str]:
    version, trace, span, flags = header.split("-")
    return version, trace, span, flags


async def _post(url: str, body: Any, traceparent: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if traceparent is not None:
        headers["traceparent"] = traceparent
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/events", json=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def test_every_attempt_sends_the_trace_id_of_the_ingest_header_with_its_own_span_id(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, database=database(engine, request))
    async with Recorder() as rx, running(settings) as d:
        rx.reply_on("/hook", Reply(500))
        async with Api(d.url) as api:
            await api.create_webhook(rx.url + "/hook")
            status, _ = await _post(d.url, {"type": "t", "data": {}}, TRACEPARENT)
            assert status == 202
            first, second = (await rx.wait_for_requests(2, deadline=DEADLINE))[:2]
    sent = [_parts(r.headers["traceparent"]) for r in (first, second)]
    assert [s[1] for s in sent] == [TRACE, TRACE]
    assert [s[3] for s in sent] == ["01", "01"]
    spans = {s[2] for s in sent}
    assert len(spans) == 2 and PARENT not in spans, sent


async def test_an_events_own_traceparent_wins_over_the_header_and_none_sends_none(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, database=database(engine, request))
    async with Recorder() as rx, running(settings) as d, Api(d.url) as api:
        await api.create_webhook(rx.url + "/hook")
        await api.emit({"id": "plain", "type": "t", "data": {}})
        status, _ = await _post(
            d.url,
            [
                {"id": "own", "type": "t", "data": {}, "traceparent": OTHER},
                {"id": "inherits", "type": "t", "data": {}},
            ],
            TRACEPARENT,
        )
        assert status == 202
        received = await rx.wait_for_requests(3, deadline=DEADLINE)
    by_id = {r.headers["webhook-id"]: r.headers.get("traceparent") for r in received}
    assert by_id["plain"] is None
    assert by_id["own"] is not None and _parts(by_id["own"])[1] == OTHER.split("-")[1]
    assert by_id["inherits"] is not None and _parts(by_id["inherits"])[1] == TRACE


@pytest.mark.parametrize(
    "bad",
    [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # 00 with more
    ],
)
async def test_a_malformed_traceparent_is_a_400_naming_the_field(bad: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with running(settings) as d:
        status, body = await _post(d.url, {"id": "probe", "type": "t", "data": {}}, bad)
        assert status == 400, body
        assert body["error"]["message"].startswith("traceparent (header)"), body
        status, body = await _post(
            d.url, [{"id": "probe", "type": "t", "data": {}, "traceparent": bad}], None
        )
        assert status == 400, body
        assert "events[0].traceparent" in body["error"]["message"], body
        # Nothing was stored: the id is still free for other content.
        status, body = await _post(d.url, {"id": "probe", "type": "other", "data": 1}, None)
        assert status == 202, body


async def test_publish_and_an_outbox_insert_store_a_traceparent_that_attempts_carry(
    pg: PgCluster, pg_schema: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, database={"url": pg.url, "schema": pg_schema})
    async with Recorder() as rx, running(settings) as d:
        async with Api(d.url) as api:
            await api.create_webhook(rx.url + "/hook")
        con = await asyncpg.connect(pg.url)
        try:
            await con.execute(
                f"SELECT {pg_schema}.publish('published', 't', '{{}}'::jsonb, "
                f"traceparent => '{OTHER}')"
            )
            await con.execute(
                f"INSERT INTO {pg_schema}.pipeline_events (event_id, event_type, payload, "
                f"traceparent) VALUES ('inserted', 't', '{{}}', '{TRACEPARENT}')"
            )
            with pytest.raises(asyncpg.CheckViolationError, match="traceparent"):
                await con.execute(
                    f"INSERT INTO {pg_schema}.pipeline_events (event_id, event_type, payload, "
                    "traceparent) VALUES ('bad', 't', '{}', 'not-a-traceparent')"
                )
            with pytest.raises(asyncpg.CheckViolationError, match="traceparent"):
                await con.execute(
                    f"SELECT {pg_schema}.publish('bad', 't', '{{}}'::jsonb, "
                    "traceparent => 'not-a-traceparent')"
                )
        finally:
            await con.close()
        received = await rx.wait_for_requests(2, deadline=DEADLINE)
    sent = {r.headers["webhook-id"]: _parts(r.headers["traceparent"]) for r in received}
    assert sent["inserted"][1] == TRACE and sent["inserted"][2] != PARENT
    assert sent["published"][1] == OTHER.split("-")[1]


class OtlpReceiver:
    """An OTLP/HTTP trace receiver: decodes each protobuf export request it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _export(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        async with self.changed:
            self.changed.notify_all()
        return web.Response(content_type="application/x-protobuf", body=b"")

    async def wait_for(self, count: int) -> list[Any]:
        async with asyncio.timeout(DEADLINE), self.changed:
            await self.changed.wait_for(lambda: len(self.spans) >= count)
        return list(self.spans)

    async def __aenter__(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def _attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = value.string_value if value.HasField("string_value") else value.int_value
    return out


async def test_spans_of_the_ingest_and_each_attempt_reach_an_otlp_receiver(
    tmp_path: Path,
) -> None:
    async with OtlpReceiver() as otlp, Recorder() as rx:
        settings = make_settings(tmp_path, tracing={"otlp_endpoint": otlp.url})
        secret = "whsec_" + "A" * 32
        rx.reply_on("/hook", Reply(503))
        async with running(settings) as d:
            async with Api(d.url) as api:
                wid = (await api.create_webhook(rx.url + "/hook", secret=secret))["webhook_id"]
                status, _ = await _post(d.url, {"type": "t", "data": {"card": "4242"}}, TRACEPARENT)
                assert status == 202
                await rx.wait_for_requests(1, deadline=DEADLINE)
                rx.reply_on("/hook", Reply(200))
                received = await rx.wait_for_requests(2, deadline=DEADLINE)
            spans = await otlp.wait_for(3)
    ingest = [s for s in spans if s.name == "webhookd ingest"]
    attempts = sorted(
        (s for s in spans if s.name == "webhookd attempt"),
        key=lambda s: _attributes(s)["webhookd.attempt"],
    )
    assert len(ingest) == 1 and len(attempts) == 2
    assert ingest[0].trace_id.hex() == TRACE and ingest[0].parent_span_id.hex() == PARENT
    for span, sent in zip(attempts, received[:2], strict=True):
        assert span.trace_id.hex() == TRACE
        # The receiver's traceparent names this span: its own spans nest under it.
        assert _parts(sent.headers["traceparent"])[2] == span.span_id.hex()
        assert span.parent_span_id.hex() == PARENT
    first, second = (_attributes(s) for s in attempts)
    assert first == {
        "webhookd.webhook_id": wid,
        "webhookd.attempt": 1,
        "webhookd.outcome": "retry",
        "http.response.status_code": 503,
    }
    assert second["webhookd.outcome"] == "delivered" and second["webhookd.attempt"] == 2
    exported = repr(spans)
    assert "4242" not in exported and secret[6:] not in exported and TOKEN not in exported


def test_without_an_endpoint_the_sdk_is_never_imported(tmp_path: Path) -> None:
    """A daemon delivers a traced event without tracing.otlp_endpoint in a fresh
    interpreter, which then holds no opentelemetry module."""
    script = textwrap.dedent(
        f"""
        import asyncio, json, sys
        from pathlib import Path
        from tests.conftest import Api, make_settings, running
        from tests.receivers import Recorder

        async def main() -> None:
            settings = make_settings(Path({str(tmp_path)!r}))
            async with Recorder() as rx, running(settings) as d, Api(d.url) as api:
                await api.create_webhook(rx.url + "/hook")
                await api.emit({{"type": "t", "data": {{}}, "traceparent": {TRACEPARENT!r}}})
                (got,) = await rx.wait_for_requests(1, deadline=30)
            loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
            print(json.dumps({{"traceparent": got.headers["traceparent"], "loaded": loaded}}))

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert _parts(result["traceparent"])[1] == TRACE
    assert result["loaded"] == []
