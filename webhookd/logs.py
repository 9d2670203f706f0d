"""Structured logs: JSON lines on stdout (journald keeps them) or a console renderer.

Everything the process logs goes through one pipeline: structlog's own loggers and, bridged
into it, the standard library's (aiohttp, asyncio, warnings), so nothing reaches stderr raw.
On the way, values under secret keys are masked, secrets registered with `never_log` are
cut out of every line, and, for the console, control and bidi characters are escaped.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

# Keys whose values are never written, whatever a caller passes by mistake.
_SECRET_KEYS = frozenset({"secret", "secrets", "token", "authorization", "body", "password"})
REDACTED = "[redacted]"

# Characters that act on a terminal instead of showing: C0 controls, DEL, C1 controls (an
# ESC or CSI starts a sequence that can retitle or rewrite the terminal), the bidi controls
# that reorder what is read (U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069), and lone
# surrogates (not encodable: printing one fails).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` safe to show on a terminal: control and bidi characters as \\xNN / \\uNNNN."""
    return _UNSAFE.sub(_escape, text)


def _printable_lines(text: str) -> str:
    """As `printable`, keeping line breaks (a traceback's layout)."""
    return "\n".join(printable(line) for line in text.split("\n"))


class _Secrets:
    """The strings cut out of every line (never_log), found by their first characters: a
    line is searched once for each distinct beginning, not once for each secret. Every
    tenant token begins the same way, and a daemon that had made a thousand of them spent
    100 us on each line searching for them one by one (bench/README.md)."""

    START = 4

    def __init__(self) -> None:
        # beginning -> length -> the secrets that begin so and are that long
        self._by_start: dict[str, dict[int, set[str]]] = {}

    def add(self, secret: str) -> None:
        by_length = self._by_start.setdefault(secret[: self.START], {})
        by_length.setdefault(len(secret), set()).add(secret)

    def cut(self, line: str) -> str:
        found: list[str] = []
        for start, by_length in self._by_start.items():
            at = line.find(start)
            while at != -1:
                for length, secrets in by_length.items():
                    piece = line[at : at + length]
                    if piece in secrets:
                        found.append(piece)
                at = line.find(start, at + 1)
        if found:
            # Longest first: a secret that holds a shorter one goes whole.
            for secret in sorted(set(found), key=len, reverse=True):
                line = line.replace(secret, REDACTED)
        return line


_secrets = _Secrets()


def never_log(secret: str) -> None:
    """Cut `secret` out of every line logged from now on, wherever it turns up."""
    if secret:
        _secrets.add(secret)
        # As JSON writes it, if it holds a quote, a backslash or a non-ASCII character.
        _secrets.add(json.dumps(secret)[1:-1])


def _drop_secrets(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in _SECRET_KEYS.intersection(event_dict):
        event_dict[key] = REDACTED
    return event_dict


def _cut_secrets(_: Any, __: str, line: Any) -> Any:
    """The last step, on the rendered line: registered secrets never leave."""
    return _secrets.cut(line) if isinstance(line, str) else line


def _escape_for_terminal(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # The console renderer writes strings as they are (other values through repr(), which
    # escapes); a stored id holding ESC or U+202E must not act on the operator's terminal.
    escaped: dict[str, Any] = {}
    for key, value in event_dict.items():
        if isinstance(value, str):
            value = _printable_lines(value) if key in ("exception", "stack") else printable(value)
        escaped[printable(key)] = value
    return escaped


class _Bridge(logging.Handler):
    """Standard-library records (aiohttp, asyncio, warnings) into the structlog pipeline."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            exc = record.exc_info[1] if record.exc_info else None
            if exc is not None:
                if record.name.startswith("aiohttp"):
                    # aiohttp's errors about a malformed request quote its raw bytes (header
                    # lines, a bearer token with them): the error's type is enough.
                    fields["error"] = type(exc).__name__
                else:
                    fields["exc_info"] = record.exc_info
            structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **fields)
        except Exception:  # pragma: no cover - logging must never raise into its caller
            self.handleError(record)


def _bridge_stdlib_logging(level: int) -> None:
    # Without a handler, a record at WARNING or above goes to stderr through logging's
    # last resort: aiohttp's server logger printed a malformed request's header lines
    # there, a bearer token with them.
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _Bridge):
            root.removeHandler(handler)
    root.addHandler(_Bridge())
    root.setLevel(level)
    logging.captureWarnings(True)


def _fallback(value: Any) -> Any:
    """What JSON cannot carry as it is: its __structlog__ form, or its repr (as structlog's
    own fallback)."""
    method = getattr(value, "__structlog__", None)
    return method() if callable(method) else repr(value)


# One encoder for every line: json.dumps with any keyword argument builds a new JSONEncoder
# on each call, a third of the cost of rendering an attempt's line (one line per attempt,
# SPEC). ensure_ascii, as json.dumps: every control character escaped.
_ENCODER = json.JSONEncoder(default=_fallback)


class _Clock:
    """The time of a line as TimeStamper(fmt="iso", utc=True) writes it
    ("2026-12-08T03:28:43.279529Z"; no fraction at a whole second), with the part up to the
    seconds made once a second: formatting a datetime was a tenth of a line's cost."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        return self.at(time.time())

    def at(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        micro = round((now - second) * 1_000_000)
        if micro >= 1_000_000:  # rounded up into the next second: write it as that one
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second + 1))
        return f"{self._prefix}.{micro:06d}Z" if micro else f"{self._prefix}Z"


_clock = _Clock()


def _json_line(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """add_log_level, TimeStamper(fmt="iso", utc=True), _drop_secrets, format_exc_info,
    the JSON rendering and _cut_secrets in one step, in that order, for the JSON format:
    at info every attempt writes a line (SPEC), and six processors' calls were a third
    of its cost."""
    event_dict = structlog.processors.add_log_level(logger, method_name, event_dict)
    event_dict["timestamp"] = _clock.now()
    event_dict = _drop_secrets(logger, method_name, event_dict)
    if "exc_info" in event_dict:
        event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
    return _cut_secrets(logger, method_name, _ENCODER.encode(event_dict))


def configure(fmt: str = "json", level: str = "info") -> None:
    numeric = logging.getLevelNamesMapping()[level.upper()]
    steps: list[Any] = (
        [_json_line]
        if fmt == "json"
        else [
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_secrets,
            structlog.processors.format_exc_info,
            _escape_for_terminal,
            structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()),
            _cut_secrets,
        ]
    )
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *steps],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    _bridge_stdlib_logging(numeric)


def get(name: str) -> Any:
    return structlog.get_logger(name)
