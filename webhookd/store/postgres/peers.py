"""Settings that must agree across the daemons on one queue, and the disagreements found.

Every daemon registers these with its heartbeat (daemons.settings); each beat brings back
its live peers' and compares them. A daemon with another admin token, another
`max_attempts` or another destination policy turns rows dead or refuses deliveries its
peers would make, and nothing else would tell: the daemon logs each disagreement once, when
it appears, and /v1/status shows the current ones. No secret is stored: a token is known
by 8 hex digits of its SHA-256, enough to tell two apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from webhookd import logs
from webhookd.config import Settings

log = logs.get("webhookd.store")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


def shared_settings(settings: Settings, token: str | None) -> dict[str, Any]:
    """The settings whose values must be the same on every daemon of a queue."""
    d, r = settings.delivery, settings.retention
    return {
        "admin.token": digest(token) if token else None,
        "admin.max_body_bytes": settings.admin.max_body_bytes,
        "database.peer_timeout": settings.database.peer_timeout,
        "delivery.allow_private_destinations": d.allow_private_destinations,
        "delivery.max_attempts": d.max_attempts,
        "delivery.retry_schedule": list(d.retry_schedule),
        "delivery.jitter": d.jitter,
        "delivery.timeout": d.timeout,
        "delivery.lease": d.lease,
        "delivery.per_webhook_concurrency": d.per_webhook_concurrency,
        "delivery.disable_after": d.disable_after,
        "retention.delivered_ttl": r.delivered_ttl,
        "retention.log_ttl": r.log_ttl,
    }


class Peers:
    def __init__(self, mine: Mapping[str, Any]) -> None:
        self.mine = dict(mine)
        self.disagreements: dict[str, list[str]] = {}

    def compare(self, peers: Mapping[str, Mapping[str, Any]]) -> None:
        """`peers`: each live peer's settings, by daemon id."""
        found: dict[str, list[str]] = {}
        for daemon_id, theirs in peers.items():
            keys = sorted(
                k for k in self.mine.keys() | theirs.keys() if self.mine.get(k) != theirs.get(k)
            )
            if keys:
                found[daemon_id] = keys
        for daemon_id, keys in found.items():
            if self.disagreements.get(daemon_id) != keys:
                log.warning(
                    "this daemon's settings differ from another daemon's on the same queue; "
                    "deliveries will depend on which daemon claims them",
                    peer=daemon_id,
                    settings=keys,
                )
        self.disagreements = found
