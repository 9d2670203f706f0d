"""What a receiver's network requires, at the sender: the egress proxy (with the destination
guard still deciding the address), client certificates against a receiver that requires
one, a webhook's own headers and timeout. Real servers on 127.0.0.1 only: names are answered
by a stand-in resolver, and the test proxy maps the public-looking addresses it is asked for
onto local receivers."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import make_settings, write_config
from forward_proxy import ForwardProxy
from receivers import FakeResolver, RawServer, Recorder, never_answer
from senders import CLIENTS, Senders

from webhookd import cli, tls
from webhookd.network import DeliveryOptions
from webhookd.proxy import parse_proxy
from webhookd.senders import AttemptSender

BODY = b'{"data":{},"id":"evt_1","timestamp":"2026-01-01T00:00:00Z","type":"t"}'
HEADERS = {"content-type": "application/json", "webhook-id": "evt_1"}
PUBLIC = "93.184.216.34"  # what the stand-in DNS answers for hooks.example.com
Sender = AttemptSender
MakeSender = Callable[..., Awaitable[Sender]]


@pytest.fixture(params=CLIENTS)
async def make_sender(request: pytest.FixtureRequest) -> AsyncIterator[MakeSender]:
    """Either client as configured (delivery.http_client): with a proxy, both send on aiohttp
    (webhookd.senders), so the proxy's tests also hold for a daemon configured for reqwest."""
    senders = Senders(request.param, allow_private=False)
    yield senders.make
    await senders.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def client_context(ca: trustme.CA) -> tls.Contexts:
    """What the daemon loads for `delivery.ca_file` = this CA."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return tls.Contexts(context, {}, ca.cert_pem.bytes())


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


def to_receiver(receiver: Recorder | RawServer) -> Callable[[str, int], tuple[str, int]]:
    """The proxy's route: the public address webhookd pinned goes to the local receiver."""

    def route(host: str, port: int) -> tuple[str, int]:
        assert host == PUBLIC, f"the proxy was asked for {host}, not the checked address"
        return "127.0.0.1", receiver.port

    return route


# -- the proxy ----------------------------------------------------------------------------


async def test_https_goes_through_the_proxy_as_a_connect_to_the_checked_address(
    make_sender: MakeSender, ca: trustme.CA
) -> None:
    dns = FakeResolver({"hooks.example.com": [PUBLIC]})
    async with (
        Recorder(ssl_context=server_context(ca, "hooks.example.com")) as receiver,
        ForwardProxy(route=to_receiver(receiver)) as proxy,
    ):
        sender = await make_sender(
            resolver=dns,
            contexts=client_context(ca),
            proxy=parse_proxy(proxy.url_with("egress", "s3cret"), []),
        )
        url = f"https://hooks.example.com:{receiver.port}/hook"
        result = await sender.post(url, BODY, HEADERS)
        again = await sender.post(url, BODY, HEADERS)
    assert (result.status_code, result.error) == (200, None)
    assert again.status_code == 200
    # The proxy was asked for the address webhookd checked, never for the name.
    assert [(a.method, a.target) for a in proxy.asked] == [("CONNECT", f"{PUBLIC}:{receiver.port}")]
    assert proxy.asked[0].headers["proxy-authorization"] == "Basic ZWdyZXNzOnMzY3JldA=="
    assert proxy.connections == 1  # the tunnel is pooled like any connection
    # TLS was verified against the name (the certificate names only hooks.example.com).
    assert receiver.requests[0].headers["Host"] == f"hooks.example.com:{receiver.port}"
    assert receiver.requests[0].body == BODY
    assert dns.queries == ["hooks.example.com"]


async def test_through_the_proxy_tls_is_still_verified_against_the_name(
    make_sender: MakeSender, ca: trustme.CA
) -> None:
    dns = FakeResolver({"hooks.example.com": [PUBLIC]})
    async with (
        Recorder(ssl_context=server_context(ca, "other.example.com")) as receiver,
        ForwardProxy(route=to_receiver(receiver)) as proxy,
    ):
        sender = await make_sender(
            resolver=dns, contexts=client_context(ca), proxy=parse_proxy(proxy.url, [])
        )
        result = await sender.post(f"https://hooks.example.com:{receiver.port}/hook", BODY, HEADERS)
    assert result.status_code is None
    assert result.error is not None and result.error.startswith(
        "TLS error: certificate verify failed"
    ), result.error
    assert receiver.requests == []


async def test_http_goes_through_the_proxy_in_absolute_form_to_the_checked_address(
    make_sender: MakeSender,
) -> None:
    dns = FakeResolver({"hooks.example.com": [PUBLIC]})
    async with Recorder() as receiver, ForwardProxy(route=to_receiver(receiver)) as proxy:
        sender = await make_sender(
            resolver=dns, proxy=parse_proxy(proxy.url_with("egress", "s3cret"), [])
        )
        result = await sender.post(
            f"http://hooks.example.com:{receiver.port}/hook?a=1", BODY, HEADERS
        )
    assert (result.status_code, result.error) == (200, None)
    [asked] = proxy.asked
    assert (asked.method, asked.target) == ("POST", f"http://{PUBLIC}:{receiver.port}/hook?a=1")
    assert asked.headers["proxy-authorization"] == "Basic ZWdyZXNzOnMzY3JldA=="
    assert asked.headers["host"] == f"hooks.example.com:{receiver.port}"
    [request] = receiver.requests
    assert (request.path, request.body) == ("/hook?a=1", BODY)
    assert "Proxy-Authorization" not in request.headers


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("10.1.2.3", "private"),
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("fd00::1", "unique-local (private)"),
        ("100.64.0.1", "shared (CGNAT)"),
    ],
)
async def test_a_private_destination_is_refused_before_the_proxy(
    make_sender: MakeSender, answer: str, reason: str
) -> None:
    dns = FakeResolver({"internal.example.com": [answer]})
    async with ForwardProxy() as proxy:
        sender = await make_sender(resolver=dns, proxy=parse_proxy(proxy.url, []))
        result = await sender.post("https://internal.example.com/hook", BODY, HEADERS)
    assert result.status_code is None
    assert result.error == (
        f"destination refused: internal.example.com resolves only to {answer} ({reason}) "
        "(set delivery.allow_private_destinations to allow)"
    )
    assert proxy.connections == 0


async def test_a_private_ip_literal_is_refused_before_the_proxy(make_sender: MakeSender) -> None:
    async with ForwardProxy() as proxy:
        sender = await make_sender(proxy=parse_proxy(proxy.url, []))
        result = await sender.post("http://10.0.0.7:8080/hook", BODY, HEADERS)
    assert result.error is not None and result.error.startswith("destination refused: 10.0.0.7")
    assert proxy.connections == 0


async def test_no_proxy_hosts_are_reached_directly(make_sender: MakeSender) -> None:
    async with Recorder() as receiver, ForwardProxy() as proxy:
        sender = await make_sender(
            allow_private=True, proxy=parse_proxy(proxy.url, ["example.org", "127.0.0.1"])
        )
        result = await sender.post(receiver.url_for("/hook"), BODY, HEADERS)
    assert result.status_code == 200
    assert proxy.connections == 0
    assert len(receiver.requests) == 1


async def test_a_proxy_refusing_the_tunnel_is_the_attempts_error(
    make_sender: MakeSender,
) -> None:
    dns = FakeResolver({"hooks.example.com": [PUBLIC]})
    async with ForwardProxy(refuse_with=403) as proxy:
        sender = await make_sender(resolver=dns, proxy=parse_proxy(proxy.url, []))
        result = await sender.post("https://hooks.example.com/hook", BODY, HEADERS)
    assert result.status_code is None
    assert result.error == "proxy refused the tunnel: HTTP 403 Forbidden"


async def test_proxy_credentials_never_show_in_its_repr() -> None:
    proxy = parse_proxy("http://egress:s3cret@127.0.0.1:3128", [])
    assert "s3cret" not in repr(proxy)
    assert str(proxy.url) == "http://127.0.0.1:3128"


# -- client certificates (mTLS) -----------------------------------------------------------


def mtls_receiver(ca: trustme.CA) -> Recorder:
    context = server_context(ca, "127.0.0.1")
    context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(context)
    return Recorder(ssl_context=context)


def certificate_settings(tmp_path: Path, ca: trustme.CA) -> Any:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = ca.issue_cert("webhookd@example.com")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.crt"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    return make_settings(
        tmp_path,
        delivery={"ca_file": str(tmp_path / "ca.pem")},
        tls={
            "client_certificates": {
                "partner": {
                    "cert_file": str(tmp_path / "client.crt"),
                    "key_file": str(tmp_path / "client.key"),
                }
            }
        },
    )


async def test_the_client_certificate_is_presented_to_a_receiver_that_requires_one(
    make_sender: MakeSender, ca: trustme.CA, tmp_path: Path
) -> None:
    contexts = tls.load_contexts(certificate_settings(tmp_path, ca))
    sender = await make_sender(allow_private=True, contexts=contexts)
    options = DeliveryOptions(client_certificate="partner")
    async with mtls_receiver(ca) as receiver:
        result = await sender.post(receiver.url_for("/hook"), BODY, HEADERS, options)
        again = await sender.post(receiver.url_for("/hook"), BODY, HEADERS, options)
    assert (result.status_code, result.error) == (200, None)
    assert again.status_code == 200
    # One session for the option set, its connection reused.
    assert receiver.requests[0].peer_port == receiver.requests[1].peer_port


async def test_without_a_client_certificate_the_refusal_is_the_attempts_error(
    make_sender: MakeSender, ca: trustme.CA, tmp_path: Path
) -> None:
    contexts = tls.load_contexts(certificate_settings(tmp_path, ca))
    sender = await make_sender(allow_private=True, contexts=contexts)
    async with mtls_receiver(ca) as receiver:
        result = await sender.post(receiver.url_for("/hook"), BODY, HEADERS)
    assert result.status_code is None
    assert result.error is not None
    # Which one depends on when the receiver's refusal reaches the client: its alert, or the
    # connection reset or closed before the handshake ends (rustls reads no alert then).
    refusals = ("certificate required", "connection reset", "closed the connection during")
    assert any(refusal in result.error for refusal in refusals), result.error
    assert receiver.requests == []


async def test_a_client_certificate_is_presented_through_the_proxys_tunnel(
    make_sender: MakeSender, ca: trustme.CA, tmp_path: Path
) -> None:
    contexts = tls.load_contexts(certificate_settings(tmp_path, ca))
    context = server_context(ca, "hooks.example.com")
    context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(context)
    dns = FakeResolver({"hooks.example.com": [PUBLIC]})
    async with (
        Recorder(ssl_context=context) as receiver,
        ForwardProxy(route=to_receiver(receiver)) as proxy,
    ):
        sender = await make_sender(
            resolver=dns,
            contexts=contexts,
            proxy=parse_proxy(proxy.url, []),
        )
        url = f"https://hooks.example.com:{receiver.port}/hook"
        options = DeliveryOptions(client_certificate="partner")
        result = await sender.post(url, BODY, HEADERS, options)
        without = await sender.post(url, BODY, HEADERS)
    assert (result.status_code, result.error) == (200, None)
    assert without.status_code is None and without.error is not None
    assert [a.target for a in proxy.asked] == [f"{PUBLIC}:{receiver.port}"] * 2
    assert len(receiver.requests) == 1


async def test_a_certificate_name_not_configured_is_the_attempts_error(
    make_sender: MakeSender,
) -> None:
    sender = await make_sender(allow_private=True)
    async with Recorder() as receiver:
        result = await sender.post(
            receiver.url_for("/hook"), BODY, HEADERS, DeliveryOptions(client_certificate="gone")
        )
    assert result.error == "client certificate 'gone' is not configured (tls.client_certificates)"
    assert receiver.requests == []


# -- a webhook's own headers and timeout ---------------------------------------------------


async def test_a_webhooks_headers_are_sent_beside_webhookds(make_sender: MakeSender) -> None:
    sender = await make_sender(allow_private=True)
    options = DeliveryOptions(headers=(("X-Api-Key", "k-123"), ("Authorization", "Bearer t")))
    async with Recorder() as receiver:
        result = await sender.post(receiver.url_for("/hook"), BODY, HEADERS, options)
    assert result.status_code == 200
    [request] = receiver.requests
    assert request.headers["X-Api-Key"] == "k-123"
    assert request.headers["Authorization"] == "Bearer t"
    assert request.headers["webhook-id"] == "evt_1"


async def test_a_webhooks_timeout_ends_its_attempt(make_sender: MakeSender) -> None:
    sender = await make_sender(allow_private=True, timeout=5.0)
    async with RawServer(never_answer) as server:
        result = await sender.post(server.url, BODY, HEADERS, DeliveryOptions(timeout=0.2))
    assert result.error == "timeout after 0.2s"


async def test_a_webhooks_timeout_never_exceeds_the_daemons(make_sender: MakeSender) -> None:
    sender = await make_sender(allow_private=True, timeout=0.2)
    async with RawServer(never_answer) as server:
        result = await sender.post(server.url, BODY, HEADERS, DeliveryOptions(timeout=30.0))
    assert result.error == "timeout after 0.2s"


# -- check-config ---------------------------------------------------------------------------


def check_config(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["check-config", "--config", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_config_names_an_unreadable_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path,
        tls={
            "client_certificates": {
                "partner": {
                    "cert_file": str(tmp_path / "no.crt"),
                    "key_file": str(tmp_path / "no.key"),
                }
            }
        },
    )
    code, _, err = check_config(config, capsys)
    assert code == 2
    assert "tls.client_certificates.partner.cert_file: cannot read" in err
    assert "tls.client_certificates.partner.key_file: cannot read" in err


def test_check_config_names_a_key_that_is_not_the_certificates(
    tmp_path: Path, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    one, other = ca.issue_cert("one.example"), ca.issue_cert("other.example")
    one.cert_chain_pems[0].write_to_path(str(tmp_path / "one.crt"))
    other.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    config = write_config(
        tmp_path,
        tls={
            "client_certificates": {
                "partner": {
                    "cert_file": str(tmp_path / "one.crt"),
                    "key_file": str(tmp_path / "other.key"),
                }
            }
        },
    )
    code, _, err = check_config(config, capsys)
    assert code == 2
    assert (
        f"tls.client_certificates.partner: key_file '{tmp_path / 'other.key'}' is not the key"
        in err
    )


def test_check_config_masks_the_proxy_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path,
        delivery={"proxy": "http://egress:s3cret@proxy.internal:3128", "no_proxy": ["a.example"]},
    )
    code, out, _ = check_config(config, capsys)
    assert code == 0
    assert "s3cret" not in out
    assert '"proxy": "http://egress:**********@proxy.internal:3128"' in out


@pytest.mark.parametrize(
    ("proxy", "problem"),
    [
        ("https://proxy.internal:3128", "delivery.proxy: an HTTP proxy"),
        ("http://proxy.internal", "delivery.proxy: needs a host and a port"),
        ("http://proxy.internal:3128/path", "delivery.proxy: nothing after host:port"),
    ],
)
def test_check_config_refuses_a_proxy_that_is_not_http_host_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], proxy: str, problem: str
) -> None:
    code, _, err = check_config(write_config(tmp_path, delivery={"proxy": proxy}), capsys)
    assert code == 2
    assert problem in err


def test_check_config_names_an_unreadable_proxy_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, delivery={"proxy_file": str(tmp_path / "none")})
    code, _, err = check_config(config, capsys)
    assert code == 2
    assert "delivery.proxy_file: cannot read" in err


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_an_ipv6_answer_is_asked_of_the_proxy_in_brackets(
    make_sender: MakeSender, ca: trustme.CA, scheme: str
) -> None:
    public6 = "2606:2800:220:1:248:1893:25c8:1946"
    dns = FakeResolver({"hooks.example.com": [public6]})
    served = server_context(ca, "hooks.example.com") if scheme == "https" else None

    def route(host: str, port: int) -> tuple[str, int]:
        assert host == public6, host
        return "127.0.0.1", receiver.port

    async with (
        Recorder(ssl_context=served) as receiver,
        ForwardProxy(route=route) as proxy,
    ):
        sender = await make_sender(
            resolver=dns, contexts=client_context(ca), proxy=parse_proxy(proxy.url, [])
        )
        result = await sender.post(
            f"{scheme}://hooks.example.com:{receiver.port}/hook", BODY, HEADERS
        )
    assert (result.status_code, result.error) == (200, None)
    [asked] = proxy.asked
    expected = f"[{public6}]:{receiver.port}"
    assert asked.target == (expected if scheme == "https" else f"http://{expected}/hook")
