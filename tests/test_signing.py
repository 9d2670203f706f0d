"""Signatures per Standard Webhooks, checked by the standardwebhooks package."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from webhookd import signing


def test_new_secret_has_the_standard_form() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:])) == 32
    assert signing.new_secret() != secret


@pytest.mark.parametrize(
    "bad", ["nope", "whsec_!!!", "whsec_" + base64.b64encode(b"x" * 8).decode()]
)
def test_malformed_secrets_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        signing.secret_key(bad)


def test_standardwebhooks_accepts_our_signature() -> None:
    secret = signing.new_secret()
    body = b'{"data":{"a":1},"id":"evt_1","timestamp":"2026-01-01T00:00:00Z","type":"t"}'
    import time

    headers = signing.headers([signing.secret_key(secret)], "evt_1", int(time.time()), body)
    assert headers["webhook-id"] == "evt_1"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("webhookd/")
    Webhook(secret).verify(body, headers)


def test_every_secret_signs_during_rotation() -> None:
    import time

    old, new = signing.new_secret(), signing.new_secret()
    body = b"{}"
    keys = [signing.secret_key(new), signing.secret_key(old)]
    headers = signing.headers(keys, "evt_2", int(time.time()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)


# -- v1a: ed25519, checked with the cryptography package's own verifier -------------------


def _public(public_key: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    assert public_key.startswith("whpk_")
    raw = base64.b64decode(public_key[5:], validate=True)
    assert len(raw) == 32
    return Ed25519PublicKey.from_public_bytes(raw)


def _v1a(header: str) -> list[bytes]:
    return [base64.b64decode(entry[4:]) for entry in header.split(" ") if entry.startswith("v1a,")]


def test_v1a_key_pairs_have_the_standard_form() -> None:
    private, public = signing.new_key_pair()
    assert private.startswith("whsk_") and len(base64.b64decode(private[5:])) == 32
    assert signing.public_key(private) == public
    assert signing.new_key_pair()[1] != public
    assert signing.scheme(private) == "v1a"
    assert signing.scheme(signing.new_secret()) == "v1"


def test_v1a_signature_verifies_with_the_public_key() -> None:
    private, public = signing.new_key_pair()
    body = b'{"data":{"a":1},"id":"evt_1","timestamp":"2026-01-01T00:00:00Z","type":"t"}'
    headers = signing.headers([signing.secret_key(private)], "evt_1", 1767225600, body)
    [signature] = _v1a(headers["webhook-signature"])
    assert headers["webhook-signature"].startswith("v1a,")
    _public(public).verify(signature, b"evt_1.1767225600." + body)
    from cryptography.exceptions import InvalidSignature

    with pytest.raises(InvalidSignature):
        _public(public).verify(signature, b"evt_1.1767225601." + body)
    with pytest.raises(InvalidSignature):
        _public(signing.new_key_pair()[1]).verify(signature, b"evt_1.1767225600." + body)


def test_v1a_rotation_signs_with_both_keys() -> None:
    (old, old_public), (new, new_public) = signing.new_key_pair(), signing.new_key_pair()
    keys = [signing.secret_key(new), signing.secret_key(old)]
    headers = signing.headers(keys, "evt_2", 1767225600, b"{}")
    first, second = _v1a(headers["webhook-signature"])
    _public(new_public).verify(first, b"evt_2.1767225600.{}")
    _public(old_public).verify(second, b"evt_2.1767225600.{}")
