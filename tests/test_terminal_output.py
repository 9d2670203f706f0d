"""What reaches a terminal or the journal: control and bidi characters escaped in human
output (CLI tables and fields, console logs), JSON exact, and the standard library's log
records (aiohttp, asyncio, warnings) through the same redacting pipeline as ours.

The log tests run `logs.configure` in a fresh interpreter: it configures the process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO
from webhookd import client_cli
from webhookd.logs import printable

C0 = [chr(c) for c in range(0x20)]
C1 = [chr(c) for c in range(0x80, 0xA0)]
BIDI = [chr(c) for c in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))]
UNSAFE = [*C0, "\x7f", *C1, *BIDI]
# An OSC retitling the terminal, a CSI clearing it, and a right-to-left override.
NASTY = "evt_\x1b]0;owned\x07\x1b[2J\u202egnp.exe"


@pytest.mark.parametrize("char", UNSAFE, ids=[f"U+{ord(c):04X}" for c in UNSAFE])
def test_printable_escapes_each_control_and_bidi_character(char: str) -> None:
    shown = printable(f"a{char}b")
    code = ord(char)
    assert shown == (f"a\\x{code:02x}b" if code <= 0xFF else f"a\\u{code:04x}b")
    assert shown.isascii() and shown.isprintable()


def test_printable_leaves_ordinary_text_alone() -> None:
    text = "order.created évènement 注文 😀 a\\x1b b-c_d:e/f"
    assert printable(text) == text


def test_cli_tables_and_fields_escape_stored_strings(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"webhook_id": NASTY, "url": "https://example.com/\u202e", "event_types": [NASTY]}]
    client_cli.print_table(rows, ["webhook_id", "url", "event_types"])
    client_cli.print_fields({"description": NASTY, NASTY: 1})
    client_cli.show_ids({"ids": [NASTY]})
    client_cli.note(NASTY)
    out, err = capsys.readouterr()
    for text in (out, err):
        assert not any(char in text for char in UNSAFE if char != "\n"), text
        assert "\\x1b]0;owned\\x07" in text and "\\u202e" in text
    assert out.count("\\x1b[2J") == 5


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_console_log_lines_escape_values() -> None:
    done = run_python(
        f"""
        from webhookd import logs
        logs.configure("console", "info")
        log = logs.get("t")
        log.info({NASTY!r}, event_id={NASTY!r}, types=[{NASTY!r}])
        try:
            raise ValueError({NASTY!r})
        except ValueError:
            log.exception("failed", **{{{NASTY!r}: 1}})
        """
    )
    assert done.returncode == 0 and done.stderr == "", done
    out = done.stdout
    assert not any(char in out for char in UNSAFE if char != "\n"), out
    assert out.count("\\x1b]0;owned\\x07") == 5  # event, a value, in a list, a key, the error
    assert "Traceback (most recent call last):\n" in out  # the traceback keeps its lines


def test_json_log_lines_keep_the_value_exactly() -> None:
    done = run_python(
        f"""
        from webhookd import logs
        logs.configure("json", "info")
        logs.get("t").info("attempt", event_id={NASTY!r})
        """
    )
    assert done.returncode == 0 and done.stderr == "", done
    (line,) = done.stdout.splitlines()
    assert line.isascii()  # every control character written as a JSON escape
    assert json.loads(line)["event_id"] == NASTY


def test_standard_library_records_go_through_the_pipeline() -> None:
    """aiohttp's server logger printed raw request lines (a token with them) to stderr."""
    done = run_python(
        """
        import logging, warnings
        from aiohttp.http_exceptions import BadHttpMessage
        from webhookd import logs
        logs.configure("json", "info")
        logs.never_log("tok-SECRET-123")
        try:
            raise BadHttpMessage("b'Authorization: Bearer tok-SECRET-123\\\\nHost: x'")
        except BadHttpMessage:
            logging.getLogger("aiohttp.server").exception("Error handling request")
        logging.getLogger("asyncio").error("callback failed: %s", "Bearer tok-SECRET-123")
        logging.getLogger("aiohttp.server").debug("below the level")
        warnings.warn("a warning", UserWarning)
        logs.get("webhookd.test").info("plain", note="tok-SECRET-123")
        """
    )
    assert done.returncode == 0, done
    assert done.stderr == ""
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert "tok-SECRET-123" not in done.stdout
    by_event = {line["event"]: line for line in lines}
    aiohttp_line = by_event["Error handling request"]
    assert aiohttp_line["level"] == "error" and aiohttp_line["logger"] == "aiohttp.server"
    assert aiohttp_line["error"] == "BadHttpMessage" and "exception" not in aiohttp_line
    assert by_event["callback failed: Bearer [redacted]"]["logger"] == "asyncio"
    assert by_event["plain"]["note"] == "[redacted]"
    assert any("a warning" in line["event"] for line in lines)
    assert "below the level" not in by_event
