"""The HTTP POST of one attempt, against real receivers on 127.0.0.1.

Well-behaved receivers are aiohttp apps (receivers.Recorder); misbehaving ones are
raw asyncio servers (receivers.RawServer). No connection leaves the loopback.
"""

from __future__ import annotations

import asyncio
import ssl
import tracemalloc
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import trustme
from receivers import (
    FakeResolver,
    RawServer,
    Recorder,
    Reply,
    Streamed,
    answer,
    close_before_status,
    endless,
    never_answer,
    read_request,
    reset_after_headers,
    reset_after_status_line,
    reset_before_status,
    response_head,
    trickle,
    unused_port,
)
from senders import CLIENTS, Senders

from webhookd.attempts import AttemptResult, parse_retry_after
from webhookd.senders import AttemptSender, HttpClient, build_sender
from webhookd.tls import Contexts

DEADLINE = 5.0
BODY = b'{"data":{"n":1},"id":"evt_1","timestamp":"2024-01-01T00:00:00Z","type":"t.created"}'
HEADERS = {
    "content-type": "application/json",
    "user-agent": "webhookd/0.1.0",
    "webhook-id": "evt_1",
    "webhook-timestamp": "1700000000",
    "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
}

MakeSender = Callable[..., Awaitable[AttemptSender]]
Sender = AttemptSender


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest) -> HttpClient:
    """Every test of the contract runs on both clients (webhookd.senders)."""
    name: HttpClient = request.param
    return name


@pytest.fixture
async def make_sender(client: HttpClient) -> AsyncIterator[MakeSender]:
    senders = Senders(client, timeout=DEADLINE, allow_private=True)
    yield senders.make
    await senders.close()


async def post(sender: Sender, url: str) -> AttemptResult:
    return await sender.post(url, BODY, HEADERS)


def no_status(result: AttemptResult) -> None:
    assert result.status_code is None
    assert result.response_excerpt == ""
    assert result.retry_after is None
    assert result.duration_ms >= 0


# --- what the receiver gets ---------------------------------------------------------


async def test_2xx_is_a_success_with_the_body_and_headers_byte_for_byte(
    make_sender: MakeSender,
) -> None:
    sender = await make_sender()
    async with Recorder(status=200, body=b"thanks") as receiver:
        result = await post(sender, receiver.url_for("/hooks/in?x=1"))
    assert result.status_code == 200
    assert result.error is None
    assert result.response_excerpt == "thanks"
    assert result.retry_after is None
    [request] = receiver.requests
    assert request.method == "POST"
    assert request.path == "/hooks/in?x=1"
    assert request.body == BODY
    for name, value in HEADERS.items():
        assert request.headers.getall(name) == [value]


async def test_sender_adds_only_the_headers_http_requires(
    make_sender: MakeSender, client: HttpClient
) -> None:
    sender = await make_sender()
    async with Recorder() as receiver:
        await post(sender, receiver.url_for("/"))
    [request] = receiver.requests
    names = {name.lower() for name in request.headers}
    # reqwest adds `accept: */*` to every request and cannot be told not to.
    accept = {"accept"} if client == "reqwest" else set()
    assert names == {*HEADERS, "host", "content-length", *accept}
    assert "accept-encoding" not in names
    assert request.headers["content-length"] == str(len(BODY))


async def test_configured_user_agent_is_used_when_the_caller_sets_none(
    make_sender: MakeSender,
) -> None:
    sender = await make_sender(user_agent="webhookd/9.9")
    async with Recorder() as receiver:
        await sender.post(receiver.url_for("/"), BODY, {"content-type": "application/json"})
    assert receiver.requests[0].headers["user-agent"] == "webhookd/9.9"


async def test_204_no_content_is_a_success(make_sender: MakeSender) -> None:
    sender = await make_sender()
    async with Recorder(status=204) as receiver:
        result = await post(sender, receiver.url_for("/"))
    assert (result.status_code, result.error, result.response_excerpt) == (204, None, "")


async def test_excerpt_is_capped_at_max_response_bytes(make_sender: MakeSender) -> None:
    sender = await make_sender(max_response_bytes=100)
    async with Recorder(body=b"x" * 10_000) as receiver:
        result = await post(sender, receiver.url_for("/"))
    assert result.status_code == 200
    assert result.response_excerpt == "x" * 100


async def test_excerpt_of_zero_bytes_when_configured(make_sender: MakeSender) -> None:
    sender = await make_sender(max_response_bytes=0)
    async with Recorder(body=b"ignored") as receiver:
        result = await post(sender, receiver.url_for("/"))
    assert (result.status_code, result.response_excerpt) == (200, "")


async def test_excerpt_replaces_invalid_utf8(make_sender: MakeSender) -> None:
    sender = await make_sender()
    async with Recorder(body=b"ok \xff\xfe caf\xc3\xa9") as receiver:
        result = await post(sender, receiver.url_for("/"))
    assert result.response_excerpt == "ok \ufffd\ufffd café"


async def test_connection_is_reused_after_a_fully_read_response(make_sender: MakeSender) -> None:
    sender = await make_sender(max_response_bytes=100)
    async with Recorder(body=b"short") as receiver:
        await post(sender, receiver.url_for("/1"))
        await post(sender, receiver.url_for("/2"))
    first, second = receiver.requests
    assert first.peer_port == second.peer_port


@pytest.mark.parametrize("status", [200, 204])
async def test_connection_is_reused_after_a_response_without_a_body(
    make_sender: MakeSender, status: int
) -> None:
    # 204 has no body by definition, a 200 here says Content-Length: 0: the reqwest sender
    # does not read one, and its connection still goes back to the pool.
    sender = await make_sender(max_response_bytes=100)
    async with Recorder(status=status) as receiver:
        results = [await post(sender, receiver.url_for(f"/{i}")) for i in range(3)]
    assert [(r.status_code, r.error, r.response_excerpt) for r in results] == [
        (status, None, "")
    ] * 3
    assert len({r.peer_port for r in receiver.requests}) == 1


async def test_connection_is_dropped_when_the_body_exceeds_the_cap(
    make_sender: MakeSender,
) -> None:
    # Far more than socket and read buffers hold: the rest is still on the wire.
    sender = await make_sender(max_response_bytes=100)
    async with Recorder(body=b"y" * (16 * 1024 * 1024)) as receiver:
        await post(sender, receiver.url_for("/1"))
        await post(sender, receiver.url_for("/2"))
    first, second = receiver.requests
    assert first.peer_port != second.peer_port


# --- statuses ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_is_reported_and_not_followed(make_sender: MakeSender, status: int) -> None:
    sender = await make_sender()
    async with Recorder() as receiver:
        target = receiver.url_for("/elsewhere")
        receiver.reply_on("/hook", Reply(status, {"Location": target}, b"moved"))
        result = await post(sender, receiver.url_for("/hook"))
    assert result.status_code == status
    assert result.error == f"redirect not followed ({status} to {target})"
    assert receiver.paths() == ["/hook"]


async def test_redirect_without_location_is_reported(make_sender: MakeSender) -> None:
    sender = await make_sender()
    async with Recorder(status=302) as receiver:
        result = await post(sender, receiver.url_for("/hook"))
    assert result.error == "redirect not followed (302, no Location)"


async def test_410_gone_is_reported_with_its_status(make_sender: MakeSender) -> None:
    sender = await make_sender()
    async with Recorder(status=410, body=b"unsubscribed") as receiver:
        result = await post(sender, receiver.url_for("/"))
    assert result.status_code == 410
    assert result.error == "HTTP 410 Gone"
    assert result.response_excerpt == "unsubscribed"


async def test_500_is_a_failure_with_the_response_excerpt(make_sender: MakeSender) -> None:
    sender = await make_sender()
    async with Recorder(status=500, body=b"boom") as receiver:
        result = await post(sender, receiver.url_for("/"))
    assert result.status_code == 500
    assert result.error == "HTTP 500 Internal Server Error"
    assert result.response_excerpt == "boom"
    assert result.retry_after is None


async def test_429_with_retry_after_seconds(make_sender: MakeSender) -> None:
    sender = await make_sender()
    async with Recorder(status=429, headers={"Retry-After": "120"}) as receiver:
        result = await post(sender, receiver.url_for("/"))
    assert result.status_code == 429
    assert result.error == "HTTP 429 Too Many Requests"
    assert result.retry_after == 120.0


async def test_429_with_retry_after_http_date(make_sender: MakeSender) -> None:
    sender = await make_sender()
    when = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    async with Recorder(status=429, headers={"Retry-After": when}) as receiver:
        result = await post(sender, receiver.url_for("/"))
    assert result.status_code == 429
    assert result.retry_after is not None
    assert 3000 < result.retry_after <= 3600


async def test_503_with_retry_after(make_sender: MakeSender) -> None:
    sender = await make_sender()
    async with Recorder(status=503, headers={"Retry-After": "30"}) as receiver:
        result = await post(sender, receiver.url_for("/"))
    assert (result.status_code, result.retry_after) == (503, 30.0)
    assert result.error == "HTTP 503 Service Unavailable"


async def test_unparseable_retry_after_is_ignored(make_sender: MakeSender) -> None:
    sender = await make_sender()
    async with Recorder(status=503, headers={"Retry-After": "soon"}) as receiver:
        result = await post(sender, receiver.url_for("/"))
    assert (result.status_code, result.retry_after) == (503, None)


NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("0", 0.0),
        ("120", 120.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("-5", None),
        ("soon", None),
        ("12abc", None),
        ("\u0661\u0662", None),  # non-ASCII digits
        ("Wed, 01 May 2024 12:10:00 GMT", 600.0),
        ("Wednesday, 01-May-24 12:10:00 GMT", 600.0),  # RFC 850
        ("Wed May  1 12:10:00 2024", 600.0),  # asctime
        ("Wed, 01 May 2024 11:00:00 GMT", 0.0),  # in the past
        ("9" * 400, float(2**31)),  # clamped, never infinite
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


# --- network failures ----------------------------------------------------------------


async def test_connection_refused(make_sender: MakeSender) -> None:
    sender = await make_sender()
    result = await post(sender, f"http://127.0.0.1:{unused_port()}/")
    no_status(result)
    assert result.error == "connection refused"


async def test_reset_before_the_status_line(make_sender: MakeSender) -> None:
    sender = await make_sender()
    async with RawServer(reset_before_status) as server:
        result = await post(sender, server.url)
    no_status(result)
    assert result.error == "connection reset"


async def test_close_before_the_status_line(make_sender: MakeSender) -> None:
    sender = await make_sender()
    async with RawServer(close_before_status) as server:
        result = await post(sender, server.url)
    no_status(result)
    assert result.error == "connection closed by the server before a response"


async def test_reset_after_the_status_line_before_the_headers_end(
    make_sender: MakeSender,
) -> None:
    sender = await make_sender()
    async with RawServer(reset_after_status_line) as server:
        result = await post(sender, server.url)
    no_status(result)
    assert result.error == "connection reset"


async def test_reset_after_the_headers_keeps_the_status_and_what_was_read(
    make_sender: MakeSender,
) -> None:
    sender = await make_sender()
    async with RawServer(reset_after_headers(b"partial", announced=1000)) as server:
        result = await post(sender, server.url)
    assert result.status_code == 200
    assert result.error is None
    assert result.response_excerpt == "partial"


async def test_garbage_instead_of_http_is_an_invalid_response(make_sender: MakeSender) -> None:
    sender = await make_sender()
    async with RawServer(answer(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")) as server:
        result = await post(sender, server.url)
    no_status(result)
    assert result.error is not None
    assert result.error.startswith("invalid response: ")
    assert "\n" not in result.error


@pytest.mark.parametrize(
    "header", [b"X-A: a\r\n  b\r\n", b"X-A: a\x01b\r\n"], ids=["obs-fold", "control byte"]
)
async def test_a_sloppy_response_header_does_not_undo_the_status(
    make_sender: MakeSender, header: bytes
) -> None:
    """The status decides the outcome: a header line a strict parser refuses must not turn
    a receiver's 200 into a retry (and a duplicate)."""
    sender = await make_sender()
    raw = b"HTTP/1.1 200 OK\r\n" + header + b"Content-Length: 2\r\n\r\nok"
    async with RawServer(answer(raw)) as server:
        result = await post(sender, server.url)
    assert (result.status_code, result.error, result.response_excerpt) == (200, None, "ok")


async def test_silent_receiver_times_out(make_sender: MakeSender) -> None:
    sender = await make_sender(timeout=0.5)
    async with RawServer(never_answer) as server:
        result = await post(sender, server.url)
        await server.wait_handled()  # the sender hung up
    no_status(result)
    assert result.error == "timeout after 0.5s"


async def test_body_trickled_past_the_timeout_keeps_the_status_and_a_partial_excerpt(
    make_sender: MakeSender,
) -> None:
    sender = await make_sender(timeout=0.5)
    body = bytes(range(48, 58)) * 100  # would take 20 s at one byte every 20 ms
    streamed = Streamed()
    async with RawServer(trickle(body, 0.02, streamed)) as server:
        result = await post(sender, server.url)
        await server.wait_handled()
    assert result.status_code == 200
    assert result.error is None
    excerpt = result.response_excerpt.encode()
    assert excerpt
    assert body.startswith(excerpt)
    assert len(excerpt) < len(body)
    assert streamed.client_gone.is_set()


async def test_huge_streaming_response_is_not_read_past_the_cap(make_sender: MakeSender) -> None:
    sender = await make_sender(max_response_bytes=4096)
    total = 2 * 1024 * 1024 * 1024  # 2 GiB offered; only the cap is ever read
    streamed = Streamed()
    tracemalloc.start()
    try:
        async with RawServer(endless(total, streamed)) as server:
            result = await post(sender, server.url)
            await server.wait_handled()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024  # memory stays flat: the body is never buffered
    assert result.status_code == 200
    assert result.response_excerpt == "a" * 4096
    assert streamed.client_gone.is_set()
    assert streamed.sent < total // 2  # the sender dropped the connection early


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_receiver_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


async def test_tls_receiver_with_an_untrusted_certificate_is_refused_by_default(
    make_sender: MakeSender, tls_receiver_context: ssl.SSLContext
) -> None:
    sender = await make_sender()
    async with Recorder(ssl_context=tls_receiver_context) as receiver:
        result = await post(sender, receiver.url_for("/"))
    no_status(result)
    assert result.error is not None
    assert result.error.startswith("TLS error: certificate verify failed: ")
    assert receiver.requests == []


async def test_tls_receiver_is_trusted_with_a_context_loading_its_ca(
    make_sender: MakeSender, ca: trustme.CA, tls_receiver_context: ssl.SSLContext
) -> None:
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    sender = await make_sender(contexts=Contexts(client_context, {}, ca.cert_pem.bytes()))
    async with Recorder(ssl_context=tls_receiver_context, body=b"secure") as receiver:
        result = await post(sender, receiver.url_for("/"))
    assert (result.status_code, result.error, result.response_excerpt) == (200, None, "secure")
    assert receiver.requests[0].body == BODY


async def test_tls_to_a_plain_http_receiver_is_a_tls_error(make_sender: MakeSender) -> None:
    sender = await make_sender()
    async with Recorder() as receiver:
        result = await post(sender, receiver.url_for("/").replace("http://", "https://"))
    no_status(result)
    assert result.error is not None
    assert result.error.startswith("TLS error: ")


# --- DNS and destination safety ----------------------------------------------------------


@pytest.mark.parametrize("allow_private", [True, False])
async def test_name_that_does_not_resolve_is_a_dns_error(
    make_sender: MakeSender, allow_private: bool
) -> None:
    sender = await make_sender(allow_private=allow_private)
    result = await post(sender, "http://nonexistent.invalid/hook")
    no_status(result)
    assert result.error is not None
    assert result.error.startswith("DNS error: nonexistent.invalid: ")


@pytest.mark.parametrize(
    ("host", "refusal"),
    [
        ("127.0.0.1", "destination refused: 127.0.0.1 is a loopback address"),
        ("localhost", "destination refused: localhost resolves only to 127.0.0.1 (loopback)"),
    ],
)
async def test_guard_refuses_a_loopback_receiver_without_connecting(
    make_sender: MakeSender, host: str, refusal: str
) -> None:
    sender = await make_sender(allow_private=False)
    async with Recorder() as receiver, RawServer(answer(b"")) as raw:
        result = await post(sender, receiver.url_for("/hook", host=host))
        raw_result = await post(sender, raw.url.replace("127.0.0.1", host))
    for res in (result, raw_result):
        no_status(res)
        assert res.error is not None
        assert res.error.startswith(refusal)
        assert res.error.endswith("(set delivery.allow_private_destinations to allow)")
    assert receiver.requests == []
    assert raw.connections == 0


@pytest.mark.parametrize("url", ["http://[::1]:9/", "http://[::ffff:127.0.0.1]:9/"])
async def test_guard_refuses_ipv6_loopback_literals(make_sender: MakeSender, url: str) -> None:
    sender = await make_sender(allow_private=False)
    result = await post(sender, url)
    no_status(result)
    assert result.error is not None
    assert result.error.startswith("destination refused: ")


async def test_guard_checks_the_address_resolved_at_connect_time(
    make_sender: MakeSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A public-looking name whose DNS answer now points at the loopback (rebinding).
    dns = FakeResolver({"hooks.example.com": ["127.0.0.1"]})
    sender = await make_sender(allow_private=False, resolver=dns)
    async with RawServer(answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")) as server:
        result = await post(sender, f"http://hooks.example.com:{server.port}/hook")
    no_status(result)
    assert result.error == (
        "destination refused: hooks.example.com resolves only to 127.0.0.1 (loopback) "
        "(set delivery.allow_private_destinations to allow)"
    )
    assert dns.queries == ["hooks.example.com"]
    assert server.connections == 0


async def test_allow_private_reaches_loopback(make_sender: MakeSender) -> None:
    sender = await make_sender(allow_private=True)
    async with Recorder() as receiver:
        result = await post(sender, receiver.url_for("/hook", host="localhost"))
    assert (result.status_code, result.error) == (200, None)


# --- misuse ------------------------------------------------------------------------------


async def test_invalid_url_is_reported_not_raised(make_sender: MakeSender) -> None:
    sender = await make_sender()
    result = await post(sender, "http://example.com:99999/")
    no_status(result)
    assert result.error is not None
    assert result.error.startswith("invalid URL: ")


async def test_post_before_start_is_a_programming_error(client: HttpClient) -> None:
    sender = build_sender(
        client, timeout=1.0, max_response_bytes=10, allow_private=True, pool_size=1, user_agent="t"
    )
    with pytest.raises(RuntimeError, match="start"):
        await sender.post("http://127.0.0.1:9/", BODY, HEADERS)


async def test_close_closes_pooled_connections_and_is_idempotent(
    make_sender: MakeSender,
) -> None:
    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer one request and keep the connection open until the client closes it."""
        await read_request(reader)
        writer.write(response_head(204, "No Content"))
        await writer.drain()
        await reader.read()

    sender = await make_sender()
    async with RawServer(keep_alive) as server:
        result = await post(sender, server.url + "/hook")
        assert (result.status_code, result.error) == (204, None)
        assert not server.handled.is_set()  # the connection waits in the sender's pool
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await sender.close()
            await server.wait_handled()  # closing the sender closed it
            await sender.close()  # again: nothing left to close, and no error
        # Closed, not merely dropped (aiohttp warns when it collects an unclosed session).
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)], caught
        assert server.connections == 1
    with pytest.raises(RuntimeError, match="start"):
        await post(sender, "http://127.0.0.1:9/")
