"""Destination safety: which addresses webhookd may deliver to.

By default webhookd refuses to deliver to loopback, private, link-local (cloud
metadata), shared (CGNAT), multicast, reserved and every other non-global
address. The check runs twice:

* when a webhook is created or changed, :func:`validate_url` refuses URLs that are
  not plain ``http``/``https``, carry credentials, are longer than
  :data:`MAX_URL_LENGTH`, have a host that is neither a valid IP literal nor a valid
  DNS host name (:func:`host_problem`), or name a forbidden IP literal;
* at connect time, :class:`GuardedResolver` filters the addresses a host name
  resolves to, so the address actually connected to is the one checked (this is
  what defeats DNS rebinding). aiohttp does not call the resolver for IP-literal
  hosts, so the sender checks those itself with :func:`forbidden_reason`.

Hosts are checked strictly (and again at send time, for URLs stored before the check
existed) because aiohttp treats anything that does not look like a DNS name as an IP
literal and skips the resolver: ``http://[::1%]/``, ``http://1.2.3.4.5/`` or
``http://127.0.0.1../`` would otherwise be refused only by the luck of aiohttp's and
the C library's own parsing.

``delivery.allow_private_destinations = true`` lifts all of this.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

__all__ = [
    "MAX_URL_LENGTH",
    "DestinationRefused",
    "GuardedResolver",
    "IPAddress",
    "check_target",
    "checked_target",
    "forbidden_reason",
    "host_problem",
    "is_forbidden",
    "validate_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_HINT = "set delivery.allow_private_destinations to allow"

_THIS_NETWORK_V4 = ipaddress.IPv4Network("0.0.0.0/8")
_SHARED_V4 = ipaddress.IPv4Network("100.64.0.0/10")
_RFC1918_V4 = tuple(
    ipaddress.IPv4Network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
_METADATA_V4 = ipaddress.IPv4Address("169.254.169.254")
_NAT64_V6 = ipaddress.IPv6Network("64:ff9b::/96")
# Special-purpose blocks that older Python releases still report as global.
_SPECIAL_V4 = ipaddress.IPv4Network("192.0.0.0/24")  # IETF protocol assignments
_SPECIAL_V4_GLOBAL = (ipaddress.IPv4Address("192.0.0.9"), ipaddress.IPv4Address("192.0.0.10"))
_SPECIAL_V6 = (
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # local-use NAT64
    ipaddress.IPv6Network("3fff::/20"),  # documentation
)
_UNIQUE_LOCAL_V6 = ipaddress.IPv6Network("fc00::/7")

# Legacy numeric host forms that inet_aton() maps onto an IPv4 address
# ("2130706433", "127.1", "0x7f.0.0.1", "0177.0.0.1"). Not host names either.
_NUMERIC_HOST = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\.?", re.I)

# Longest webhook URL accepted, in characters (as given and once normalised).
MAX_URL_LENGTH = 2048
# A DNS host name (RFC 1035, RFC 1123): at most 253 characters without the trailing
# dot, labels of 1-63 letters, digits and hyphens, no hyphen first or last. IDNA names
# arrive here already in their ASCII (xn--) form.
MAX_HOST_NAME_LENGTH = 253
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.I)
# A last label that is a number (decimal or 0x-hex) makes a name an IPv4 address to URL
# parsers and to inet_aton(), never a host name.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*", re.I)


_Refused = tuple[tuple[str, str], ...]  # (address, reason) pairs


class DestinationRefused(OSError):
    """A delivery destination is a forbidden address.

    A subclass of :class:`OSError` so that aiohttp treats a refusal raised by the
    resolver like any other failure to connect (it wraps it in
    ``ClientConnectorDNSError`` and keeps it as ``os_error``). ``str()`` of the
    exception is the full human message, starting with ``destination refused:``.
    """

    def __init__(self, host: str, refused: Iterable[tuple[str, str]]) -> None:
        self.host = host
        self.refused: _Refused = tuple(refused)
        super().__init__(self._message())

    def _message(self) -> str:
        if len(self.refused) == 1 and self.refused[0][0] == self.host:
            address, reason = self.refused[0]
            return f"destination refused: {address} is {_article(reason)} address ({ALLOW_HINT})"
        listed = ", ".join(f"{address} ({reason})" for address, reason in self.refused[:4])
        if len(self.refused) > 4:
            listed += f" and {len(self.refused) - 4} more"
        if not listed:
            listed = "no usable address"
        return f"destination refused: {self.host} resolves only to {listed} ({ALLOW_HINT})"

    def __reduce__(
        self,
    ) -> tuple[type[DestinationRefused], tuple[str, tuple[tuple[str, str], ...]]]:
        return (type(self), (self.host, self.refused))


def _article(word: str) -> str:
    vowel_sound = word[:1] in "aeiou" and not word.startswith("uni")
    return f"an {word}" if vowel_sound else f"a {word}"


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a safe destination, or ``None`` if it is a public address.

    IPv4 addresses embedded in IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, 6to4
    ``2002::/16`` and NAT64 ``64:ff9b::/96``) are judged by the IPv4 address.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64_V6:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return forbidden_reason(embedded)
        if ip.is_unspecified:
            return "unspecified"
        if ip.is_loopback:
            return "loopback"
        if ip in _UNIQUE_LOCAL_V6:
            return "unique-local (private)"
        if ip.is_link_local:
            return "link-local"
        if ip.is_site_local:
            return "site-local"
        if any(ip in net for net in _SPECIAL_V6):
            return "non-public"
    else:
        if ip in _THIS_NETWORK_V4:
            return "unspecified"
        if ip.is_loopback:
            return "loopback"
        if ip == _METADATA_V4:
            return "link-local (cloud metadata)"
        if ip.is_link_local:
            return "link-local"
        if ip in _SHARED_V4:
            return "shared (CGNAT)"
        if any(ip in net for net in _RFC1918_V4):
            return "private"
        if ip in _SPECIAL_V4 and ip not in _SPECIAL_V4_GLOBAL:
            return "non-public"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non-public"
    return None


def is_forbidden(ip: IPAddress) -> bool:
    """True if delivering to ``ip`` is refused unless private destinations are allowed."""
    return forbidden_reason(ip) is not None


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is an IP literal (brackets allowed), else ``None``."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def host_problem(host: str) -> str | None:
    """Why ``host`` is neither a valid IP literal nor a valid DNS host name, or ``None``.

    ``host`` is a URL's host as yarl gives it (``URL.raw_host``): IPv6 without its
    brackets, a name in its ASCII (IDNA ``xn--``) form. Accepted: a canonical IPv4
    address; an IPv6 address without a zone id (``%eth0`` names an interface of this
    machine, meaningless for a remote receiver); a host name of labels of 1-63 letters,
    digits and hyphens (not first or last), at most 253 characters, with at most one
    trailing dot, whose last label is not a number. So ``1.2.3.4.5`` (a number last),
    ``127.0.0.1..`` (an empty label) and ``2130706433`` (a legacy IPv4 form) are refused.
    """
    if not host:
        return "URL has no host"
    if ":" in host:
        if "%" in host:
            return f"URL host [{host}] has an IPv6 zone id (%...), which is not allowed"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"URL host [{host}] is not a valid IPv6 address"
        return None
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        pass
    else:
        return None
    if _NUMERIC_HOST.fullmatch(host):
        return f"URL host {host!r} is not a canonical IP address or a host name"
    name = host[:-1] if host.endswith(".") else host
    if not name:
        return f"URL host {host!r} is not a host name"
    if len(name) > MAX_HOST_NAME_LENGTH:
        return f"URL host is longer than {MAX_HOST_NAME_LENGTH} characters"
    labels = name.split(".")
    for label in labels:
        if not label:
            return f"URL host {host!r} is not a valid host name: it has an empty label"
        if len(label) > 63:
            return f"URL host {host!r} is not a valid host name: a label is over 63 characters"
        if not _LABEL.fullmatch(label):
            return (
                f"URL host {host!r} is not a valid host name: labels are letters, digits "
                "and hyphens, not starting or ending with a hyphen"
            )
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return (
            f"URL host {host!r} is not a canonical IP address or a host name "
            "(its last label is a number)"
        )
    return None


def _written_host_is_bracketed(url: str) -> bool:
    """Whether the host as written is in brackets (yarl drops them from ``[v1.x]``)."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return False
    return netloc.rpartition("@")[2].startswith("[")


def check_target(url: str, parsed: URL) -> None:
    """Raise ``ValueError`` if ``url`` (parsed as ``parsed``) is too long or its host is
    not a valid IP literal or DNS host name; used at registration and at send time."""
    if len(url) > MAX_URL_LENGTH or len(str(parsed)) > MAX_URL_LENGTH:
        raise ValueError(f"URL is longer than {MAX_URL_LENGTH} characters")
    host = parsed.raw_host or ""
    problem = host_problem(host)
    if problem is not None:
        raise ValueError(problem)
    if ":" not in host and _written_host_is_bracketed(url):
        raise ValueError(f"URL host [{host}] is not a valid IPv6 address")


def validate_url(url: str, *, allow_private: bool) -> str:
    """Check a webhook URL and return it normalised; raise ``ValueError`` if unusable.

    Refuses schemes other than ``http``/``https``, a missing host, credentials in
    the URL, a URL longer than :data:`MAX_URL_LENGTH`, a host that is neither a valid
    IP literal nor a valid DNS host name (see :func:`host_problem`), and (unless
    ``allow_private``) an IP-literal host that is a forbidden address. What a host
    name resolves to is checked at connect time.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise ValueError("URL must not contain white space or control characters")
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"URL is not valid: {exc}") from None
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https"):
        shown = f"{scheme!r}" if scheme else "none"
        raise ValueError(f"URL scheme must be http or https, not {shown}")
    if not parsed.absolute or not parsed.raw_host:
        raise ValueError("URL has no host")
    if (
        parsed.raw_user is not None
        or parsed.raw_password is not None
        or "@" in parsed.raw_authority
    ):
        raise ValueError("URL must not contain credentials (user:password@)")
    check_target(url, parsed)
    ip = parse_ip(parsed.raw_host)
    if ip is not None and not allow_private:
        reason = forbidden_reason(ip)
        if reason is not None:
            raise ValueError(
                f"URL host {ip} is {_article(reason)} address; "
                f"private destinations are refused ({ALLOW_HINT})"
            )
    try:
        port = parsed.port
    except ValueError as exc:
        raise ValueError(f"URL port is not valid: {exc}") from None
    if port == 0:
        raise ValueError("URL port must not be 0")
    return str(parsed)


class GuardedResolver(AbstractResolver):
    """A resolver that drops forbidden addresses from what ``inner`` resolves.

    If nothing is left, :class:`DestinationRefused` is raised, so aiohttp never
    connects to a forbidden address, whatever DNS answered at that moment.
    """

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner: AbstractResolver = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed: list[ResolveResult] = []
        refused: list[tuple[str, str]] = []
        for result in results:
            address = result["host"]
            ip = parse_ip(address)
            reason = "unparseable" if ip is None else forbidden_reason(ip)
            if reason is None:
                allowed.append(result)
            elif (address, reason) not in refused:
                refused.append((address, reason))
        if not allowed:
            raise DestinationRefused(host, refused)
        return allowed

    async def close(self) -> None:
        await self._inner.close()


@lru_cache(maxsize=8192)
def checked_target(url: str) -> tuple[URL, str | None]:
    """A stored URL checked again at send time (a URL stored before these checks): the
    parsed URL and, if its host is a forbidden IP literal, the refusal text. Cached: a
    sender parses a webhook's URL once, not at every attempt.

    Raises ``ValueError`` for a URL that is not valid, too long, or whose host is neither a
    valid IP literal nor a valid DNS host name (see :func:`check_target`)."""
    parsed = URL(url)
    check_target(url, parsed)
    host = parsed.host
    ip = parse_ip(host) if host else None
    reason = forbidden_reason(ip) if ip is not None else None
    if reason is not None:
        return parsed, str(DestinationRefused(str(ip), [(str(ip), reason)]))
    return parsed, None
