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
def registered_secret() -> Iterator[None]:
    """SECRET is cut out of every line while a test runs (the configured JSON format is
    tested end to end in a fresh interpreter: tests/test_terminal_output.py)."""
    before = set(logs._secrets)
    logs.never_log(SECRET)
    yield
    logs._secrets.intersection_update(before)


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
