"""TLS for deliveries: the trust store (the system's plus `delivery.ca_file`) and the client
certificates of `[tls.client_certificates.NAME]` that webhooks present for mTLS.

Certificates and keys are read once, at start (and by `check-config`), into one SSL context
per name; a file that cannot be read, is not PEM, or a key that does not match its
certificate is a configuration problem naming the key.
"""

from __future__ import annotations

import ssl

from webhookd.config import ConfigError, Settings

__all__ = ["Contexts", "load_contexts"]


class Contexts:
    """The SSL context for plain https (None: aiohttp's default, which verifies) and one per
    client certificate name; and the same as PEM for the reqwest client, which takes no SSL
    context: the CA file's certificates, and each name's certificate chain with its key."""

    def __init__(
        self,
        default: ssl.SSLContext | None,
        clients: dict[str, ssl.SSLContext],
        ca_pem: bytes | None = None,
        identities: dict[str, bytes] | None = None,
    ):
        self.default = default
        self.clients = clients
        self.ca_pem = ca_pem
        self.identities = identities or {}


def _trust(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca_file = settings.delivery.ca_file
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                [f"delivery.ca_file: cannot use {str(ca_file)!r} ({_why(exc)})"]
            ) from None
    return context


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _readable(path: str, key: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        return f"{key}: cannot read {path!r} ({exc.strerror})"
    return None


def _pem(path: str) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read()
    return data if data.endswith(b"\n") else data + b"\n"


def load_contexts(settings: Settings) -> Contexts:
    """Every SSL context the sender needs; ConfigError names every problem found."""
    problems: list[str] = []
    default: ssl.SSLContext | None = None
    try:
        default = _trust(settings) if settings.delivery.ca_file is not None else None
    except ConfigError as exc:
        problems.extend(exc.problems)
    clients: dict[str, ssl.SSLContext] = {}
    identities: dict[str, bytes] = {}
    for name, pair in settings.tls.client_certificates.items():
        prefix = f"tls.client_certificates.{name}"
        unreadable = [
            problem
            for problem in (
                _readable(str(pair.cert_file), f"{prefix}.cert_file"),
                _readable(str(pair.key_file), f"{prefix}.key_file"),
            )
            if problem is not None
        ]
        if unreadable:
            problems.extend(unreadable)
            continue
        try:
            context = _trust(settings)
        except ConfigError:
            continue  # named above, once
        try:
            context.load_cert_chain(str(pair.cert_file), str(pair.key_file))
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
                problems.append(
                    f"{prefix}: key_file {str(pair.key_file)!r} is not the key of "
                    f"cert_file {str(pair.cert_file)!r}"
                )
            else:
                problems.append(
                    f"{prefix}: cert_file {str(pair.cert_file)!r} and key_file "
                    f"{str(pair.key_file)!r} are not a PEM certificate and its key ({_why(exc)})"
                )
            continue
        except OSError as exc:
            problems.append(f"{prefix}: cannot load the certificate ({_why(exc)})")
            continue
        clients[name] = context
        identities[name] = _pem(str(pair.cert_file)) + _pem(str(pair.key_file))
    if problems:
        raise ConfigError(problems)
    ca_file = settings.delivery.ca_file
    return Contexts(default, clients, _pem(str(ca_file)) if ca_file else None, identities)
