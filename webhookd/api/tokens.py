"""Who a bearer token belongs to: the operator (every route) or a producer (only the routes
that say so: POST /v1/events).

The operator token is `admin.token_file` (or WEBHOOKD_ADMIN__TOKEN). Producer tokens are the
lines of `admin.producer_token_file`, one per producer, so that producers can be rotated one
at a time: add the new token, move the producer to it, remove the old line. The file is read
at start (a problem in it stops the start, as `check-config` reports) and again within a
second of a change, on the next request that presents a token other than the operator's;
while a changed file cannot be read or holds a bad line, the tokens read before stay in force
and a warning says why.

Every comparison is constant-time (hmac.compare_digest) against every token, so the time
taken tells nothing about any of them; no token is ever logged.
"""

from __future__ import annotations

import enum
import hmac
import os
import time
from pathlib import Path

from webhookd import logs
from webhookd.config import ConfigError, producer_tokens

log = logs.get("webhookd.api")

RECHECK_INTERVAL = 1.0


class Role(enum.Enum):
    OPERATOR = "operator"
    PRODUCER = "producer"


def bearer(header: str) -> bytes | None:
    """The bearer token of an `Authorization` header, as bytes; None for another scheme."""
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    # Header values arrive decoded with surrogateescape: bytes that are not UTF-8 (anyone
    # can send them) compare as bytes instead of failing to encode.
    return presented.strip().encode("utf-8", "surrogateescape")


def _encoded(token: str) -> bytes:
    return token.encode("utf-8", "surrogateescape")


class Credentials:
    """The operator token and the producer tokens, the latter kept in step with their file.

    Empty (every token refused) until `load`, which the app calls on start-up.
    """

    def __init__(self) -> None:
        self._operator: bytes | None = None
        self._operator_text = ""
        self._file: Path | None = None
        self._producers: list[bytes] = []
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = time.monotonic()
        self._warned_stamp: tuple[int, int, int] | None = None

    def load(self, operator: str, producers: list[str], producer_file: Path | None) -> None:
        if not operator:
            raise ValueError("the operator token is empty")
        for token in (operator, *producers):
            logs.never_log(token)
        self._operator = _encoded(operator)
        self._operator_text = operator
        self._file = producer_file
        self._producers = [_encoded(t) for t in producers]
        self._stamp = self._file_stamp()
        self._checked_at = time.monotonic()

    @property
    def producer_count(self) -> int:
        return len(self._producers)

    def role(self, authorization: str) -> Role | None:
        """The role of the `Authorization` header's bearer token, or None (401)."""
        presented = bearer(authorization)
        if presented is None or self._operator is None:
            return None
        if hmac.compare_digest(presented, self._operator):
            return Role.OPERATOR
        self._refresh()
        matched = False
        for token in self._producers:  # no early exit: every token is compared
            matched |= hmac.compare_digest(presented, token)
        return Role.PRODUCER if matched else None

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self._file is None:
            return None
        try:
            st = os.stat(self._file)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _refresh(self) -> None:
        if self._file is None:
            return
        now = time.monotonic()
        if now - self._checked_at < RECHECK_INTERVAL:
            return
        self._checked_at = now
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        try:
            text = self._file.read_text(encoding="utf-8")
            tokens = producer_tokens(text, str(self._file), self._operator_text)
        except (OSError, UnicodeDecodeError, ConfigError) as exc:
            if stamp != self._warned_stamp:
                self._warned_stamp = stamp
                problems = (
                    exc.problems
                    if isinstance(exc, ConfigError)
                    else [f"cannot read {str(self._file)!r} ({type(exc).__name__})"]
                )
                log.warning(
                    "admin.producer_token_file changed but cannot be used; "
                    "the tokens read before stay in force",
                    problems=problems,
                )
            return
        for token in tokens:
            logs.never_log(token)
        self._producers = [_encoded(t) for t in tokens]
        self._stamp = stamp
        self._warned_stamp = None
        log.info("producer tokens re-read", producer_tokens=len(tokens))
