"""The JSON log line is rendered in one step (logs._json_line): it must write what
structlog's own processors wrote, key for key and in the same order, with secrets masked
and cut out, and the time as TimeStamper(fmt="iso", utc=True) writes it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from webhookd import logs

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _reference(method_name: str, event_dict: dict[str, Any]) -> str:
    """The processors the JSON format ran before they were one step."""
    steps: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        logs._drop_secrets,
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(serializer=lambda v, **_: logs._ENCODER.encode(v)),
        logs._cut_secrets,
    ]
    value: Any = event_dict
    for step in steps:
        value = step(None, method_name, value)
    return str(value)


def _failure() -> BaseException:
    try:
        raise ValueError(f"bad {SECRET}")
    except ValueError as exc:
        return exc


CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "an attempt": (
        "info",
        {
            "webhook_id": "wh_1",
            "event_id": "evt_1",
            "attempt": 1,
            "status_code": 204,
            "duration_ms": 1.2,
            "outcome": "delivered",
            "error": None,
            "event": "attempt",
        },
    ),
    "a secret under its key and in a value": (
        "warning",
        {"token": "t0k", "body": "{...}", "detail": f"uses {SECRET}", "event": "x"},
    ),
    "warn is warning": ("warn", {"event": "careful"}),
    "exception is error, with its traceback": (
        "exception",
        {"event": "failed", "exc_info": _failure()},
    ),
    "what JSON cannot carry": ("info", {"event": "odd", "when": datetime(2026, 1, 2), "n": {1}}),
    "control characters": ("info", {"event": "a\x1b[2Jb\u202e", "ünicode": "é"}),
}


@pytest.fixture(autouse=True)
def registered_secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """SECRET alone is cut out of every line while a test runs (the configured JSON format
    is tested end to end in a fresh interpreter: tests/test_terminal_output.py)."""
    monkeypatch.setattr(logs, "_secrets", logs._Secrets())
    logs.never_log(SECRET)
    yield


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_line_is_what_the_processors_one_by_one_wrote(case: tuple[str, dict[str, Any]]) -> None:
    method_name, event_dict = case
    ours = json.loads(logs._json_line(None, method_name, dict(event_dict)))
    theirs = json.loads(_reference(method_name, dict(event_dict)))
    assert list(ours) == list(theirs)
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")
    assert stamp.fullmatch(ours.pop("timestamp")) and stamp.fullmatch(theirs.pop("timestamp"))
    assert ours == theirs
    assert SECRET not in json.dumps(ours)


@pytest.mark.parametrize(
    "now",
    [
        1_765_000_000.0,  # a whole second: no fraction, as isoformat
        1_765_000_000.25,
        1_765_000_000.000001,
        1_765_000_059.9999996,  # rounds up into the next second (and minute)
        1_765_000_000.5000005,
        0.0,
    ],
)
def test_the_time_is_written_as_datetime_writes_it(now: float) -> None:
    expected = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
    clock = logs._Clock()
    assert clock.at(now) == expected
    assert clock.at(now) == expected  # and again, from the second it remembers


def test_every_registered_secret_is_cut_wherever_it_is_however_many_there_are() -> None:
    """Secrets are looked for by their beginnings (logs._Secrets): a thousand tenant tokens
    that all begin "wht_" cost a line one search, and each is still found."""
    tokens = [f"wht_tt_{i:04d}.{'x' * 10}{i}" for i in range(1000)]
    for token in tokens:
        logs.never_log(token)
    logs.never_log("ab")  # shorter than the beginning looked for
    line = (
        f"{tokens[7]} at the start, twice {tokens[500]}{tokens[500]}, in a word "
        f"x{tokens[999]}y, ab, not wht_tt_0001.xxx, and {SECRET}"
    )
    cut = logs._cut_secrets(None, "info", line)
    assert cut == (
        "[redacted] at the start, twice [redacted][redacted], in a word x[redacted]y, "
        "[redacted], not wht_tt_0001.xxx, and [redacted]"
    )


def test_a_secret_that_holds_another_is_cut_whole() -> None:
    logs.never_log("token-123")
    logs.never_log("my-token-123-long")
    assert logs._cut_secrets(None, "info", "a my-token-123-long b token-123") == (
        "a [redacted] b [redacted]"
    )
