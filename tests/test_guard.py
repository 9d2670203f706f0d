"""Destination safety: address classification, URL validation, the guarded resolver.

Nothing here opens a connection: private ranges are exercised only through
is_forbidden and a stand-in DNS resolver.
"""

from __future__ import annotations

import ipaddress
import pickle
import socket

import pytest
from receivers import FakeResolver

from webhookd.guard import (
    MAX_URL_LENGTH,
    DestinationRefused,
    GuardedResolver,
    forbidden_reason,
    host_problem,
    is_forbidden,
    validate_url,
)
from webhookd.sender import Sender

FORBIDDEN = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.5", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local (cloud metadata)"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("100.64.0.1", "shared (CGNAT)"),
    ("100.127.255.254", "shared (CGNAT)"),
    ("fd00::1", "unique-local (private)"),
    ("fc00::1", "unique-local (private)"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "link-local (cloud metadata)"),
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
    ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.2.1", "non-public"),  # documentation
    ("198.18.0.1", "non-public"),  # benchmarking
    ("192.0.0.8", "non-public"),  # IETF protocol assignments
    ("2001:db8::1", "non-public"),  # documentation
]

ALLOWED = [
    "93.184.216.34",
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:93.184.216.34",
    "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34
]


@pytest.mark.parametrize(("address", "reason"), FORBIDDEN)
def test_forbidden_addresses_are_refused_with_their_reason(address: str, reason: str) -> None:
    ip = ipaddress.ip_address(address)
    assert is_forbidden(ip)
    assert forbidden_reason(ip) == reason


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert not is_forbidden(ip)
    assert forbidden_reason(ip) is None


# --- validate_url ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("https://hooks.example.com/in", "https://hooks.example.com/in"),
        ("HTTPS://Hooks.Example.COM/In?a=1", "https://hooks.example.com/In?a=1"),
        ("http://93.184.216.34:8080/x", "http://93.184.216.34:8080/x"),
        ("https://[2606:4700::1111]/x", "https://[2606:4700::1111]/x"),
        ("https://bücher.example/ä", "https://xn--bcher-kva.example/%C3%A4"),
        ("http://localhost:9000/hook", "http://localhost:9000/hook"),  # checked at connect time
    ],
)
def test_validate_url_accepts_and_normalises(url: str, normalised: str) -> None:
    assert validate_url(url, allow_private=False) == normalised


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "scheme must be http or https"),
        ("file:///etc/passwd", "scheme must be http or https"),
        ("javascript:alert(1)", "scheme must be http or https"),
        ("example.com/hook", "scheme must be http or https"),
        ("", "URL is empty"),
        ("http:///path", "no host"),
        ("https://user:secret@example.com/", "must not contain credentials"),
        ("https://user@example.com/", "must not contain credentials"),
        ("https://:secret@example.com/", "must not contain credentials"),
        ("https://exa mple.com/", "white space"),
        ("https://example.com:99999/", "(?i)port"),
        ("http://2130706433/", "not a canonical IP address"),
        ("http://127.1/", "not a canonical IP address"),
        ("http://0x7f.0.0.1/", "not a canonical IP address"),
        ("http://0177.0.0.1/", "not a canonical IP address"),
    ],
)
def test_validate_url_refuses_unusable_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_url(url, allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://[fd00::1]/",
        "http://0.0.0.0:80/",
        "http://[::]/",
        "http://224.0.0.1/",
    ],
)
def test_validate_url_refuses_private_ip_literals(url: str) -> None:
    with pytest.raises(ValueError, match="allow_private_destinations"):
        validate_url(url, allow_private=False)


def test_validate_url_names_the_address_and_why() -> None:
    with pytest.raises(ValueError) as info:
        validate_url("http://169.254.169.254/", allow_private=False)
    assert "169.254.169.254 is a link-local (cloud metadata) address" in str(info.value)


def test_validate_url_allows_private_ip_literals_when_allowed() -> None:
    assert validate_url("http://127.0.0.1:8080/hook", allow_private=True) == (
        "http://127.0.0.1:8080/hook"
    )
    assert validate_url("http://[::1]/hook", allow_private=True) == "http://[::1]/hook"


# --- hosts: a valid IP literal or a valid DNS host name, nothing in between ----------

# Hosts aiohttp took for IP literals (so no resolver, no guard): refused whatever
# allow_private says, at registration and at send time.
BAD_HOSTS = [
    ("http://[::1%]/", "zone id"),
    ("http://[fe80::1%25eth0]:8080/", "zone id"),
    ("http://[v1.x]/", "not a valid IPv6 address"),
    ("http://1.2.3.4.5/", "last label is a number"),
    ("http://127.0.0.1../", "empty label"),
    ("http://127.0.0.1./", "not a canonical IP address"),
    ("http://a..example.com/", "empty label"),
    ("http://.example.com/", "empty label"),
    ("http://hooks.example.com../", "empty label"),
    ("http://hooks.0x1f/", "last label is a number"),
    ("http://-hooks.example.com/", "letters, digits and hyphens"),
    ("http://hooks-.example.com/", "letters, digits and hyphens"),
    ("http://hooks_in.example.com/", "letters, digits and hyphens"),
    ("http://%68ooks.example.com/", "letters, digits and hyphens"),
    ("http://" + "a" * 64 + ".example.com/", "over 63 characters"),
    ("http://" + ".".join(["a" * 63] * 4) + "/", "longer than 253"),
]


@pytest.mark.parametrize("allow_private", [True, False])
@pytest.mark.parametrize(("url", "message"), BAD_HOSTS)
def test_validate_url_refuses_hosts_that_are_neither_ip_nor_host_name(
    url: str, message: str, allow_private: bool
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        validate_url(url, allow_private=allow_private)
    assert str(info.value).startswith("URL ")


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("https://example.com/x", "https://example.com/x"),
        ("http://[2001:db8::1]:8080/", "http://[2001:db8::1]:8080/"),
        ("https://xn--bcher-kva.example/", "https://xn--bcher-kva.example/"),
        ("https://hooks.example.com./in", "https://hooks.example.com./in"),  # FQDN
        ("https://a-b.c0.example/", "https://a-b.c0.example/"),
        ("https://3com.example.com/", "https://3com.example.com/"),  # digits first: fine
        ("https://123abc/", "https://123abc/"),  # a last label not all digits
        ("https://" + "a" * 63 + ".example/", "https://" + "a" * 63 + ".example/"),
        ("http://93.184.216.34/", "http://93.184.216.34/"),
        ("http://[::ffff:93.184.216.34]/", "http://[::ffff:5db8:d822]/"),
    ],
)
def test_validate_url_accepts_valid_hosts(url: str, normalised: str) -> None:
    assert validate_url(url, allow_private=True) == normalised


def test_a_host_name_of_253_characters_is_the_longest_accepted() -> None:
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(longest) == 253
    assert host_problem(longest) is None
    assert host_problem(longest + ".") is None  # the trailing dot does not count
    assert host_problem(longest + "e") is not None


def test_validate_url_has_a_length_limit() -> None:
    fits = "https://example.com/" + "p" * (MAX_URL_LENGTH - len("https://example.com/"))
    assert len(fits) == MAX_URL_LENGTH
    assert validate_url(fits, allow_private=False) == fits
    with pytest.raises(ValueError, match=f"longer than {MAX_URL_LENGTH} characters"):
        validate_url(fits + "p", allow_private=False)


def test_the_length_limit_holds_once_percent_encoded() -> None:
    """Every "ä" takes six characters once normalised: the stored URL is what counts."""
    with pytest.raises(ValueError, match=f"longer than {MAX_URL_LENGTH} characters"):
        validate_url("https://example.com/" + "ä" * 400, allow_private=False)


@pytest.mark.parametrize(
    "url",
    [url for url, _ in BAD_HOSTS] + ["https://example.com/" + "p" * MAX_URL_LENGTH],
)
async def test_a_url_stored_before_these_checks_is_a_failed_attempt_at_send_time(
    url: str,
) -> None:
    """A webhook registered before hosts were checked keeps its URL: sending to it is a
    failed attempt with a clear error, decided before any connection or DNS query (the
    autouse fixture fails the test on any lookup of these names)."""
    sender = Sender(
        timeout=5, max_response_bytes=0, allow_private=True, pool_size=1, user_agent="t"
    )
    await sender.start()
    try:
        result = await sender.post(url, b"{}", {})
    finally:
        await sender.close()
    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("invalid URL: URL "), result.error
    assert not result.local_failure


# --- DestinationRefused ------------------------------------------------------------


def test_refusal_of_a_literal_reads_as_one_sentence() -> None:
    exc = DestinationRefused("10.0.0.5", [("10.0.0.5", "private")])
    assert str(exc) == (
        "destination refused: 10.0.0.5 is a private address "
        "(set delivery.allow_private_destinations to allow)"
    )


def test_refusal_is_an_oserror_so_aiohttp_treats_it_as_a_connect_failure() -> None:
    exc = DestinationRefused("h.example", [("10.0.0.5", "private")])
    assert isinstance(exc, OSError)
    assert str(pickle.loads(pickle.dumps(exc))) == str(exc)


# --- GuardedResolver -----------------------------------------------------------------


@pytest.mark.parametrize(("address", "reason"), FORBIDDEN)
async def test_resolver_refuses_a_name_resolving_to_a_forbidden_address(
    address: str, reason: str
) -> None:
    resolver = GuardedResolver(FakeResolver({"hooks.example.com": [address]}))
    with pytest.raises(DestinationRefused) as info:
        await resolver.resolve("hooks.example.com", 443, socket.AF_UNSPEC)
    message = str(info.value)
    assert message.startswith("destination refused: hooks.example.com resolves only to ")
    assert f"{address} ({reason})" in message
    assert "delivery.allow_private_destinations" in message


@pytest.mark.parametrize("address", ALLOWED)
async def test_resolver_passes_public_addresses_through(address: str) -> None:
    resolver = GuardedResolver(FakeResolver({"hooks.example.com": [address]}))
    results = await resolver.resolve("hooks.example.com", 443, socket.AF_UNSPEC)
    assert [r["host"] for r in results] == [address]
    assert results[0]["port"] == 443


async def test_resolver_drops_forbidden_addresses_and_keeps_the_rest() -> None:
    inner = FakeResolver(
        {"mixed.example.com": ["127.0.0.1", "93.184.216.34", "10.0.0.5", "2606:4700::1111"]}
    )
    results = await GuardedResolver(inner).resolve("mixed.example.com", 80, socket.AF_UNSPEC)
    assert [r["host"] for r in results] == ["93.184.216.34", "2606:4700::1111"]


async def test_resolver_lists_every_refused_address() -> None:
    inner = FakeResolver({"localhost.example": ["127.0.0.1", "::1"]})
    with pytest.raises(DestinationRefused) as info:
        await GuardedResolver(inner).resolve("localhost.example", 80, socket.AF_UNSPEC)
    assert info.value.refused == (("127.0.0.1", "loopback"), ("::1", "loopback"))
    assert "127.0.0.1 (loopback), ::1 (loopback)" in str(info.value)


async def test_resolver_checks_every_resolution_so_rebinding_is_caught() -> None:
    inner = FakeResolver({"rebind.example.com": ["93.184.216.34"]})
    resolver = GuardedResolver(inner)
    assert await resolver.resolve("rebind.example.com", 80, socket.AF_UNSPEC)
    inner.answers["rebind.example.com"] = ["169.254.169.254"]
    with pytest.raises(DestinationRefused, match="cloud metadata"):
        await resolver.resolve("rebind.example.com", 80, socket.AF_UNSPEC)
    assert inner.queries == ["rebind.example.com", "rebind.example.com"]


async def test_resolver_lets_dns_failures_through_unchanged() -> None:
    resolver = GuardedResolver(FakeResolver({}))
    with pytest.raises(OSError, match="Name or service not known") as info:
        await resolver.resolve("nonexistent.invalid", 80, socket.AF_UNSPEC)
    assert not isinstance(info.value, DestinationRefused)


async def test_resolver_close_closes_the_inner_resolver() -> None:
    inner = FakeResolver({})
    await GuardedResolver(inner).close()
    assert inner.closed


async def test_resolver_defaults_to_aiohttp_default_resolver() -> None:
    resolver = GuardedResolver()
    with pytest.raises(DestinationRefused) as info:
        await resolver.resolve("localhost", 80, socket.AF_INET)
    assert "localhost resolves only to 127.0.0.1 (loopback)" in str(info.value)
    await resolver.close()
