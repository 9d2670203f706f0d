"""The reqwest sender keeps the destination guard: reqwest has no resolver hook, so the
sender resolves and checks a name itself and pins the checked address into the client it
sends with (webhookd/reqwest_sender.py). What both clients share is tested on both in
test_sender.py and test_egress.py; this file is the pinning itself.

Private ranges are exercised at the resolver level only (a stand-in DNS, nothing connected
to); what is actually sent goes to a loopback receiver, the one forbidden address a test may
connect to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from pyreqwest.exceptions import ConnectError, ConnectTimeoutError, ReadError
from receivers import FakeResolver, Recorder
from senders import Senders

from webhookd import proxy
from webhookd.config import ConfigError
from webhookd.reqwest_sender import ReqwestSender, describe_error
from webhookd.senders import build_sender
from webhookd.tls import Contexts

# Under .invalid: if the pin did not hold, reqwest's own DNS could not find it either.
HOST = "hooks.webhookd.invalid"
BODY = b'{"type":"t","data":{"n":1}}'
HEADERS = {"content-type": "application/json", "webhook-id": "evt_1"}

MakeSender = Callable[..., Awaitable[ReqwestSender]]

# Forbidden addresses of every kind: checked by the guard's rule, never connected to.
PRIVATE = [
    ("10.0.0.5", "private"),
    ("192.168.1.1", "private"),
    ("172.16.0.1", "private"),
    ("169.254.169.254", "link-local (cloud metadata)"),
    ("100.64.0.1", "shared (CGNAT)"),
    ("fd00::1", "unique-local (private)"),
    ("::ffff:10.0.0.1", "private"),
    ("127.0.0.1", "loopback"),
    ("::1", "loopback"),
    ("0.0.0.0", "unspecified"),
]


@pytest.fixture
async def make_sender() -> AsyncIterator[MakeSender]:
    senders = Senders("reqwest", pool_size=4)

    async def make(
        *, allow_private: bool, answers: dict[str, list[str]] | FakeResolver
    ) -> ReqwestSender:
        dns = answers if isinstance(answers, FakeResolver) else FakeResolver(answers)
        sender = await senders.make(allow_private=allow_private, resolver=dns)
        assert isinstance(sender, ReqwestSender)
        return sender

    yield make
    await senders.close()


@pytest.mark.parametrize(("address", "reason"), PRIVATE)
async def test_a_name_resolving_to_a_forbidden_address_is_refused_before_any_pin(
    make_sender: MakeSender, address: str, reason: str
) -> None:
    sender = await make_sender(allow_private=False, answers={HOST: [address]})
    result = await sender.post(f"https://{HOST}/hook", BODY, HEADERS)
    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith(f"destination refused: {HOST} resolves only to ")
    assert f"{address} ({reason})" in result.error
    assert "delivery.allow_private_destinations" in result.error


async def test_a_name_resolving_to_loopback_is_refused_and_nothing_is_sent(
    make_sender: MakeSender,
) -> None:
    async with Recorder() as receiver:
        sender = await make_sender(allow_private=False, answers={HOST: ["127.0.0.1"]})
        result = await sender.post(f"http://{HOST}:{receiver.port}/hook", BODY, HEADERS)
        literal = await sender.post(f"{receiver.url}/hook", BODY, HEADERS)
        assert result.status_code is None
        assert result.error is not None
        assert result.error.startswith(f"destination refused: {HOST} resolves only to 127.0.0.1")
        assert literal.status_code is None
        assert literal.error is not None
        assert literal.error.startswith("destination refused: 127.0.0.1 is a loopback address")
        # Delivered after the refusals: had either reached the receiver, it came first.
        allowed = await make_sender(allow_private=True, answers={HOST: ["127.0.0.1"]})
        ok = await allowed.post(f"http://{HOST}:{receiver.port}/after", BODY, HEADERS)
        assert ok.status_code == 200
        assert [r.path for r in receiver.requests] == ["/after"]


async def test_delivers_to_the_pinned_address_when_private_destinations_are_allowed(
    make_sender: MakeSender,
) -> None:
    async with Recorder(status=200, body=b"thanks", headers={"Retry-After": "7"}) as receiver:
        sender = await make_sender(allow_private=True, answers={HOST: ["127.0.0.1"]})
        url = f"http://{HOST}:{receiver.port}/hook"
        first = await sender.post(url, BODY, HEADERS)
        second = await sender.post(url, BODY, HEADERS)
    assert (first.status_code, first.error, first.response_excerpt) == (200, None, "thanks")
    assert first.retry_after == 7.0
    assert second.status_code == 200
    assert len(receiver.requests) == 2
    got = receiver.requests[0]
    assert (got.method, got.path, got.body) == ("POST", "/hook", BODY)
    # The name stays the request's (Host, and on https the TLS name); only the address is pinned.
    assert got.headers["Host"] == f"{HOST}:{receiver.port}"
    assert got.headers["webhook-id"] == "evt_1"
    assert got.headers["User-Agent"] == "webhookd/test"


async def test_a_pin_still_among_the_answers_is_kept_with_its_connection(
    make_sender: MakeSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name whose DNS rotates its answers keeps its client: the pooled connection of the
    first POST carries the next one; an answer without the pinned address re-pins."""
    monkeypatch.setattr(proxy, "ANSWER_TTL", 0.0)  # every POST resolves the name again
    dns = FakeResolver({HOST: ["127.0.0.1", "127.0.0.2"]})
    sender = await make_sender(allow_private=True, answers=dns)
    async with Recorder() as receiver:
        url = f"http://{HOST}:{receiver.port}/hook"
        first = await sender.post(url, BODY, HEADERS)
        dns.answers[HOST] = ["127.0.0.2", "127.0.0.1"]
        rotated = await sender.post(url, BODY, HEADERS)
        # Nothing listens on 127.0.0.3: only a new pin can be refused there.
        dns.answers[HOST] = ["127.0.0.3"]
        moved = await sender.post(url, BODY, HEADERS)
    assert (first.status_code, rotated.status_code) == (200, 200)
    assert moved.error == "connection refused"
    assert dns.queries == [HOST] * 3
    assert receiver.requests[0].peer_port == receiver.requests[1].peer_port


def test_a_client_certificate_reqwest_cannot_use_is_a_configuration_error() -> None:
    contexts = Contexts(None, {}, None, {"partner": b"-----BEGIN CERTIFICATE-----\nnot pem\n"})
    with pytest.raises(ConfigError) as info:
        build_sender(
            "reqwest",
            timeout=1.0,
            max_response_bytes=0,
            allow_private=False,
            pool_size=1,
            user_agent="t",
            contexts=contexts,
        )
    assert info.value.problems[0].startswith("tls.client_certificates.partner: ")
    assert 'delivery.http_client = "aiohttp"' in info.value.problems[0]


def _error(cls: type[Exception], *causes: str) -> Exception:
    return cls("error sending request", {"causes": [{"message": c} for c in causes]})


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (
            _error(ConnectError, "tcp connect error", "Connection refused (os error 111)"),
            "connection refused",
        ),
        (
            _error(ReadError, "connection error", "Connection reset by peer (os error 104)"),
            "connection reset",
        ),
        (
            _error(ConnectError, "tcp connect error", "Network is unreachable (os error 101)"),
            "network unreachable",
        ),
        (
            _error(
                ConnectError, "client error (Connect)", "received fatal alert: CertificateRequired"
            ),
            "TLS error: the receiver refused the handshake: certificate required",
        ),
        (
            _error(
                ConnectError,
                "client error (Connect)",
                "peer closed connection without sending TLS close_notify: https://docs.rs/x",
            ),
            "TLS error: the receiver closed the connection during the handshake",
        ),
        (
            _error(
                ConnectError, "client error (Connect)", "invalid peer certificate: UnknownIssuer"
            ),
            "TLS error: certificate verify failed: invalid peer certificate: UnknownIssuer",
        ),
        (
            _error(
                ConnectError,
                "client error (SendRequest)",
                "connection closed before message completed",
            ),
            "connection closed by the server before a response",
        ),
        (
            _error(ReadError, "client error", "invalid HTTP version parsed"),
            "invalid response: invalid HTTP version parsed",
        ),
        (_error(ConnectTimeoutError, "operation timed out"), "timeout after 2.5s"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_reqwests_errors_read_as_the_aiohttp_senders_texts(exc: Exception, text: str) -> None:
    assert describe_error(exc, 2.5) == text
