"""Signatures per Standard Webhooks, checked by the standardwebhooks package."""

from __future__ import annotations

import base64

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
