"""The pyreqwest prototype sender of `bench --scenario client` (bench/reqwest_sender.py)
keeps the destination guard: reqwest has no resolver hook, so the prototype resolves and
checks a name itself and pins the checked address into the client it sends with.

Private ranges are exercised at the resolver level only (a stand-in DNS, nothing connected
to); what is actually sent goes to a loopback receiver, the one forbidden address a test may
connect to. pyreqwest is a dependency of the bench and of the tests, not of webhookd.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from receivers import FakeResolver, Recorder

from bench.reqwest_sender import ReqwestSender
from webhookd.guard import DestinationRefused

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
    senders: list[ReqwestSender] = []

    async def make(*, allow_private: bool, answers: dict[str, list[str]]) -> ReqwestSender:
        sender = ReqwestSender(
            timeout=5.0,
            max_response_bytes=4096,
            allow_private=allow_private,
            pool_size=4,
            user_agent="webhookd/test",
            resolver=FakeResolver(answers),
        )
        await sender.start()
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        await sender.close()


@pytest.mark.parametrize(("address", "reason"), PRIVATE)
async def test_a_name_resolving_to_a_forbidden_address_is_refused_before_any_pin(
    make_sender: MakeSender, address: str, reason: str
) -> None:
    sender = await make_sender(allow_private=False, answers={HOST: [address]})
    with pytest.raises(DestinationRefused) as info:
        await sender.destination(HOST, 443)
    assert f"{address} ({reason})" in str(info.value)
    assert "delivery.allow_private_destinations" in str(info.value)


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
